"""The layout of a run folder: the names of its files, the result of a run, and loading what earlier
stages left there (features, the units model). Every stage module finds its inputs through here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .codebook.codebook import CODEBOOK_FILE
from .config import RunConfig
from .errors import ConfigError, MissingArtifactError
from .featstore import FeatureStore
from .io import sha256_file
from .units import load_unit_model

FEATURES_DIR = "features"
ERRORS_FILE = "errors.tsv"
UNITS_META_FILE = "units.meta.json"
METRICS_FILE = "metrics.json"
USAGE_PLOT_FILE = "codebook_usage.png"
MARKERS_DIR = ".speechvq"  # completion keys and resumable partial outputs


@dataclass
class RunResult:
    run_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # found / processed / skipped
    metrics: dict = field(default_factory=dict)
    per_rank: bool = False  # under torchrun: this folder holds one rank's shard of the data


def stream_names(split: str, num_codebooks: int) -> list[str]:
    """One .km stream per codebook: <split>.km for one, <split>.q0.km, <split>.q1.km, ... for several."""
    return [f"{split}.km"] if num_codebooks == 1 else [f"{split}.q{g}.km" for g in range(num_codebooks)]


def unit_files_record(run_dir: Path, contents: dict[str, str]) -> dict[str, dict[str, str]]:
    """For units.meta.json: what each unit file holds and its SHA-256. A .km file has no room for metadata
    (fairseq reads it as it is), so this record, beside it and naming the codebook fingerprint, is what ties
    each unit file's exact bytes to the codebook that made them."""
    return {name: {"contents": text, "sha256": sha256_file(run_dir / name)} for name, text in contents.items()}


def open_features(result: RunResult) -> FeatureStore:
    store = FeatureStore(result.run_dir / FEATURES_DIR)
    result.counts = result.counts or store.index.get("counts", {})
    return store


def unit_model(config: RunConfig, result: RunResult):
    if config.codebook.name not in ("kmeans", "learned"):
        raise ConfigError("codebook.name", config.codebook.name, "choose kmeans or learned")
    path = Path(config.codebook.path) if config.codebook.path else None
    if path is None:
        own = result.run_dir / ("encoder" if config.codebook.name == "learned" else CODEBOOK_FILE)
        if not own.exists():
            raise MissingArtifactError(own, "quantize")
    return load_unit_model(
        config.codebook.name, path, result.run_dir, config.quantize.chunk_size, config.quantize.precision
    )
