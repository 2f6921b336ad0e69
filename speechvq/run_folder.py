"""A run folder: the one place that knows the names and formats of what a run writes and reads back.

Stages ask a RunFolder for paths and use its typed readers and writers; no other module spells a file name.
All writing goes through fileio (atomic)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import fileio
from .errors import MissingArtifactError, SpeechVQError
from .records import SkippedFile

UNITS_META_SCHEMA = 1


@dataclass(frozen=True)
class FileCounts:
    found: int = 0  # files listed for this run (its shard)
    processed: int = 0
    skipped: int = 0  # listed in errors.tsv with the reason

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ShardInfo:
    index: int = 0
    num_shards: int = 1
    dataset_utterances: int = 0  # in the whole dataset, all shards together
    merged_from: tuple[str, ...] = ()  # shard run folders, for a merged run


@dataclass(frozen=True)
class UnitFile:
    contents: str  # what the file holds, for a person reading units.meta.json
    sha256: str  # of the file's bytes: ties a .km (which has no room for a header) to this record


@dataclass(frozen=True)
class UnitsMeta:
    """units.meta.json: what made the unit files beside it."""

    codebook_fingerprint: str
    quantizer: str  # kmeans, or the encoder's quantizer (vq_ema, residual, product, gumbel)
    codebook_size: int
    num_codebooks: int
    feature_config: dict
    frame_rate_hz: float
    num_utterances: int
    num_frames: int
    counts: FileCounts
    shard: ShardInfo
    split: str
    files: dict[str, UnitFile] = field(default_factory=dict)
    schema_version: int = UNITS_META_SCHEMA

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, source: Path) -> UnitsMeta:
        if data.get("schema_version") != UNITS_META_SCHEMA:
            raise SpeechVQError(f"{source}: units.meta.json schema {data.get('schema_version')!r} is not supported")
        shard = data["shard"]
        return cls(
            **{k: v for k, v in data.items() if k not in ("counts", "shard", "files")},
            counts=FileCounts(**data["counts"]),
            shard=ShardInfo(**{**shard, "merged_from": tuple(shard.get("merged_from", ()))}),
            files={name: UnitFile(**record) for name, record in data["files"].items()},
        )


class RunFolder:
    CODEBOOK = "codebook.safetensors"
    ENCODER = "encoder"  # the train_encoder stage's model
    ENCODER_MODEL = "model.safetensors"
    ENCODER_CHECKPOINT = "checkpoint.safetensors"
    ENCODER_SNAPSHOTS = "snapshots"  # train_encoder.keep_snapshots: a model file per checkpoint
    FEATURES = "features"
    MARKERS = ".speechvq"  # completion keys and resumable partial outputs
    ERRORS_HEADER = "utt_id\tpath\treason\n"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ------------------------------------------------------------ paths
    codebook = property(lambda self: self.root / self.CODEBOOK)
    codebook_json = property(lambda self: self.root / "codebook.json")
    encoder_dir = property(lambda self: self.root / self.ENCODER)
    encoder_model = property(lambda self: self.encoder_dir / self.ENCODER_MODEL)
    encoder_checkpoint = property(lambda self: self.encoder_dir / self.ENCODER_CHECKPOINT)
    features_dir = property(lambda self: self.root / self.FEATURES)
    errors_tsv = property(lambda self: self.root / "errors.tsv")
    km_dict = property(lambda self: self.root / "dict.km.txt")
    units_jsonl = property(lambda self: self.root / "units.jsonl")
    units_dedup_jsonl = property(lambda self: self.root / "units_dedup.jsonl")
    units_meta_file = property(lambda self: self.root / "units.meta.json")
    units_parquet = property(lambda self: self.root / "units.parquet")  # quantize.parquet=true
    metrics_file = property(lambda self: self.root / "metrics.json")
    usage_plot = property(lambda self: self.root / "codebook_usage.png")
    phone_unit_plot = property(lambda self: self.root / "phone_units.png")
    report_html = property(lambda self: self.root / "report.html")
    loss_curve = property(lambda self: self.root / "loss_curve.png")
    resynth_dir = property(lambda self: self.root / "resynth")
    iterations_summary = property(lambda self: self.root / "iterations.json")  # iteration.count > 0

    def iteration_runs(self, number: int) -> tuple[Path, Path]:
        """(targets, units): iteration `number`'s run on the training audio (its k-means units are the next
        iteration's targets; it holds that iteration's model) and its codebook applied to data.path."""
        folder = self.root / f"iteration{number}"
        return folder / "targets", folder / "units"

    unit_parts_dir = property(lambda self: self.root / self.MARKERS / "units")
    lock_file = property(lambda self: self.root / self.MARKERS / "lock")  # held while a run writes here (run_lock)

    def manifest(self, split: str) -> Path:
        return self.root / f"{split}.tsv"

    def streams(self, split: str, num_codebooks: int) -> list[Path]:
        """One fairseq .km stream per codebook: <split>.km for one, <split>.q0.km, <split>.q1.km, ... for several."""
        if num_codebooks == 1:
            return [self.root / f"{split}.km"]
        return [self.root / f"{split}.q{g}.km" for g in range(num_codebooks)]

    def kmeans_checkpoint(self, stream: int = 0) -> Path:
        """The train stage's resumable k-means state (one per stream of multi-layer tokens)."""
        return self.root / self.MARKERS / f"kmeans{stream}.safetensors"

    def marker(self, stage: str) -> Path:
        return self.root / self.MARKERS / f"{stage}.json"

    def rank(self, rank: int) -> RunFolder:
        return RunFolder(self.ranks_dir / f"{rank:03d}")

    ranks_dir = property(lambda self: self.root / "ranks")

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise MissingArtifactError(path, stage)
        return path

    # ------------------------------------------------------------ manifest (fairseq .tsv)
    def write_manifest(self, split: str, root: Path, rows: Iterable[tuple[str, int]]) -> None:
        fileio.write_fairseq_tsv(self.manifest(split), root, rows)

    def read_manifest(self, split: str, stage: str = "evaluate") -> tuple[Path, list[tuple[str, int]]]:
        """(root folder, [(relative path, num_samples)]) of <split>.tsv; `stage`: who needs it, for the error."""
        lines = self.require(self.manifest(split), stage).read_text().splitlines()
        rows = []
        for line in lines[1:]:
            relative, _, count = line.partition("\t")
            rows.append((relative, int(count)))
        return Path(lines[0]), rows

    # ------------------------------------------------------------ errors.tsv
    def write_errors(self, skipped: Iterable[SkippedFile]) -> None:
        fileio.write_text(self.errors_tsv, self.ERRORS_HEADER + self.error_rows(skipped))

    @staticmethod
    def error_rows(skipped: Iterable[SkippedFile]) -> str:
        """errors.tsv's lines after its header: `utt_id<TAB>path<TAB>reason` each."""
        return "".join(f"{s.utt_id}\t{s.path}\t{s.reason}\n" for s in skipped)

    def read_errors(self) -> list[SkippedFile]:
        rows = self.errors_tsv.read_text().splitlines()[1:]
        return [SkippedFile(utt_id, Path(path), reason) for utt_id, path, reason in (r.split("\t", 2) for r in rows)]

    # ------------------------------------------------------------ units
    def write_km_dict(self, codebook_size: int) -> None:
        fileio.write_km_dict(self.km_dict, codebook_size)

    def iter_units(self, split: str, num_codebooks: int) -> Iterator[list[list[int]]]:
        """Per utterance (in manifest order), one list of units per codebook, from the .km streams."""
        handles = [self.require(path, "evaluate").open() for path in self.streams(split, num_codebooks)]
        try:
            while True:
                lines = [handle.readline() for handle in handles]
                if not lines[0]:
                    return
                yield [[int(unit) for unit in line.split()] for line in lines]
        finally:
            for handle in handles:
                handle.close()

    def read_units(self) -> dict[str, list[int]]:
        """utt_id -> units of units.jsonl (single-codebook units: one list per utterance)."""
        out = {}
        with self.require(self.units_jsonl, "train_encoder").open() as handle:
            for line in handle:
                record = json.loads(line)
                if record["units"] and isinstance(record["units"][0], list):
                    raise SpeechVQError(f"{self.units_jsonl}: units of several codebooks cannot be targets")
                out[record["id"]] = record["units"]
        return out

    def write_units_meta(self, meta: UnitsMeta) -> None:
        fileio.write_json(self.units_meta_file, meta.to_json())

    def read_units_meta(self, stage: str = "evaluate") -> UnitsMeta:
        path = self.require(self.units_meta_file, stage)
        return UnitsMeta.from_json(json.loads(path.read_text()), path)

    def unit_files(self, contents: dict[str, str]) -> dict[str, UnitFile]:
        """What each unit file holds and the SHA-256 of its bytes (names relative to the folder)."""
        return {name: UnitFile(text, fileio.sha256_file(self.root / name)) for name, text in contents.items()}

    def write_metrics(self, metrics: dict) -> None:
        fileio.write_json(self.metrics_file, metrics)
