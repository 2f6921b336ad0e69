"""The stages of a run, wired with typed inputs and outputs. Each stage reads the artifacts of the stage
before it from the run folder, so any subset can run (train once, quantize many datasets). No Hydra here."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import io
from .alignments import read_alignments
from .codebook import Codebook, kmeans, load_codebook
from .codebook.codebook import CODEBOOK_FILE
from .config import RunConfig
from .data import check_files, iter_waveforms
from .errors import AlignmentError, ConfigError, EmptyDatasetError, MissingArtifactError
from .featstore import FeatureStore, FeatureWriter
from .features import build_extractor
from .manifest import list_utterances
from .metrics import MetricsAccumulator, phone_unit_scores
from .plots import plot_codebook_usage
from .quantize import nearest_codewords
from .types import FeatureMatrix, SkippedFile

log = logging.getLogger(__name__)

STAGES = ("features", "train", "quantize", "evaluate")
FEATURES_DIR = "features"
ERRORS_FILE = "errors.tsv"
UNITS_META_FILE = "units.meta.json"
METRICS_FILE = "metrics.json"
USAGE_PLOT_FILE = "codebook_usage.png"


@dataclass
class RunResult:
    run_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # found / processed / skipped
    metrics: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "CUDA is not available on this machine")
    return device


def run(config: RunConfig, run_dir: str | Path) -> RunResult:
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError("stages", list(config.stages), f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if config.data.on_error not in ("raise", "skip"):
        raise ConfigError("data.on_error", config.data.on_error, "choose raise or skip")
    build_extractor(config.features)  # validates the feature config before any work
    result = RunResult(Path(run_dir))
    result.run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    log.info("run folder %s, device %s, stages %s", result.run_dir, device, list(config.stages))
    stage_functions = {
        "features": extract_features,
        "train": train_codebook,
        "quantize": quantize_dataset,
        "evaluate": evaluate,
    }
    for stage in STAGES:  # canonical order, whatever order the config lists them in
        if stage in config.stages:
            start = time.perf_counter()
            stage_functions[stage](config, result, device)
            result.stage_seconds[stage] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- features


def extract_features(config: RunConfig, result: RunResult, device: torch.device) -> None:
    utterances = list_utterances(config.data.path)
    found = len(utterances)
    good, skipped = check_files(utterances, config.data.on_error)
    extractor = build_extractor(config.features)
    writer = FeatureWriter(
        result.run_dir / FEATURES_DIR, config.features.to_dict(), extractor.dim, extractor.frame_rate_hz
    )
    by_id = {u.utt_id: u for u in good}
    processed = []
    waveforms = iter_waveforms(
        good, config.features.sample_rate, config.data.num_workers, config.data.on_error, skipped
    )
    with torch.inference_mode():
        for waveform in tqdm(waveforms, total=len(good), desc="features", unit="utt", disable=None):
            frames = extractor(waveform.samples.to(device))
            writer.add(FeatureMatrix(waveform.utt_id, frames, extractor.frame_rate_hz))
            processed.append(by_id[waveform.utt_id])
    _write_errors(result.run_dir / ERRORS_FILE, skipped)
    result.counts = {"found": found, "processed": len(processed), "skipped": len(skipped)}
    if not processed:
        raise EmptyDatasetError(config.data.path, f"all {found} files failed (see {ERRORS_FILE})")
    root = Path(os.path.commonpath([u.path.parent for u in processed]))
    io.write_fairseq_tsv(
        result.run_dir / f"{config.data.split}.tsv",
        root,
        ((u.path.relative_to(root).as_posix(), u.num_samples) for u in processed),
    )
    writer.close({"counts": result.counts, "source": str(config.data.path)})
    log.info("features: %d processed, %d skipped of %d found", len(processed), len(skipped), found)


def _write_errors(path: Path, skipped: list[SkippedFile]) -> None:
    lines = ["utt_id\tpath\treason\n"] + [f"{s.utt_id}\t{s.path}\t{s.reason}\n" for s in skipped]
    io.write_text(path, "".join(lines))


def _open_features(result: RunResult) -> FeatureStore:
    store = FeatureStore(result.run_dir / FEATURES_DIR)
    result.counts = result.counts or store.index.get("counts", {})
    return store


# ---------------------------------------------------------------- train


def train_codebook(config: RunConfig, result: RunResult, device: torch.device) -> None:
    if config.codebook.path:
        log.info("train: reusing codebook %s, nothing to train", config.codebook.path)
        return
    if config.codebook.name != "kmeans":
        raise ConfigError("codebook.name", config.codebook.name, "only kmeans is available")
    store = _open_features(result)
    size = config.codebook.codebook_size
    if store.num_frames < size:
        raise ConfigError("codebook.codebook_size", size, f"larger than the {store.num_frames} frames available")
    mean = std = None
    if store.feature_config.get("normalize") == "global":
        mean, std = store.moments()
    sampler = torch.Generator().manual_seed(config.seed)
    take = min(store.num_frames, config.codebook.max_train_frames)
    indices = torch.randperm(store.num_frames, generator=sampler)[:take].sort().values
    frames = store.gather(indices)
    if mean is not None:
        frames = (frames - mean) / std
    generator = torch.Generator(device=device).manual_seed(config.seed)
    log.info("train: k-means K=%d on %d of %d frames (dim %d) on %s", size, take, store.num_frames, store.dim, device)
    fit = kmeans(
        frames.to(device),
        size,
        generator=generator,
        max_iter=config.codebook.max_iter,
        tol=config.codebook.tol,
        n_init=config.codebook.n_init,
        chunk_size=config.codebook.chunk_size,
        progress=True,
    )
    codebook = Codebook(
        centroids=fit.centroids.cpu(),
        feature_config=store.feature_config,
        frame_rate_hz=store.frame_rate_hz,
        feature_mean=mean,
        feature_std=std,
        training={
            "method": "kmeans",
            "num_train_frames": take,
            "num_available_frames": store.num_frames,
            "num_utterances": len(store.utterances),
            "inertia": fit.inertia,
            "num_iterations": fit.num_iterations,
            "converged": fit.converged,
            "n_init": config.codebook.n_init,
            "seed": config.seed,
            "device": str(device),
            "source": store.index.get("source"),
        },
    )
    codebook.save(result.run_dir / CODEBOOK_FILE)
    log.info(
        "train: inertia %.6g after %d iterations; codebook %s", fit.inertia, fit.num_iterations, codebook.fingerprint
    )


def _codebook_for(config: RunConfig, result: RunResult, stage: str) -> Codebook:
    path = Path(config.codebook.path) if config.codebook.path else result.run_dir / CODEBOOK_FILE
    if not config.codebook.path and not path.exists():
        raise MissingArtifactError(path, stage)
    return load_codebook(path)


# ---------------------------------------------------------------- quantize


def quantize_dataset(config: RunConfig, result: RunResult, device: torch.device) -> None:
    store = _open_features(result)
    codebook = _codebook_for(config, result, "quantize")
    codebook.check_compatible(store.feature_config, store.dim)
    centroids = codebook.centroids.to(device)
    split = config.data.split
    out = result.run_dir
    with ExitStack() as stack:
        km = stack.enter_context(io.atomic_open(out / f"{split}.km"))
        jsonl = stack.enter_context(io.atomic_open(out / "units.jsonl"))
        dedup = stack.enter_context(io.atomic_open(out / "units_dedup.jsonl")) if config.quantize.dedup else None
        bar = stack.enter_context(tqdm(total=len(store.utterances), desc="quantize", unit="utt", disable=None))
        for entries, frames in store.iter_parts():
            units, _ = nearest_codewords(codebook.normalize(frames.to(device)), centroids, config.quantize.chunk_size)
            units = units.cpu()
            for entry in entries:
                utt_units = units[entry.offset : entry.offset + entry.num_frames]
                km.write(io.units_to_line(utt_units) + "\n")
                jsonl.write(
                    json.dumps(
                        {
                            "id": entry.utt_id,
                            "units": utt_units.tolist(),
                            "num_frames": entry.num_frames,
                            "frame_rate_hz": store.frame_rate_hz,
                        },
                        separators=(",", ":"),
                    )
                    + "\n"
                )
                if dedup is not None:
                    values, durations = io.deduplicate(utt_units)
                    dedup.write(
                        json.dumps(
                            {"id": entry.utt_id, "units": values.tolist(), "durations": durations.tolist()},
                            separators=(",", ":"),
                        )
                        + "\n"
                    )
            bar.update(len(entries))
    io.write_km_dict(out / "dict.km.txt", codebook.codebook_size)
    io.write_json(
        out / UNITS_META_FILE,
        {
            "codebook_fingerprint": codebook.fingerprint,
            "codebook_size": codebook.codebook_size,
            "feature_config": store.feature_config,
            "frame_rate_hz": store.frame_rate_hz,
            "num_utterances": len(store.utterances),
            "num_frames": store.num_frames,
            "files": {
                f"{split}.km": "fairseq labels, one line per line of " + f"{split}.tsv",
                "units.jsonl": "id, units, num_frames, frame_rate_hz",
                **(
                    {"units_dedup.jsonl": "id, run-length deduplicated units, durations in frames"}
                    if config.quantize.dedup
                    else {}
                ),
            },
        },
    )
    log.info("quantize: %d utterances, %d frames -> %s", len(store.utterances), store.num_frames, out / f"{split}.km")


# ---------------------------------------------------------------- evaluate


def evaluate(config: RunConfig, result: RunResult, device: torch.device) -> None:
    store = _open_features(result)
    codebook = _codebook_for(config, result, "evaluate")
    codebook.check_compatible(store.feature_config, store.dim)
    km_path = result.run_dir / f"{config.data.split}.km"
    if not km_path.exists():
        raise MissingArtifactError(km_path, "evaluate")
    meta = json.loads((result.run_dir / UNITS_META_FILE).read_text())
    if meta["codebook_fingerprint"] != codebook.fingerprint:
        raise ConfigError(
            "codebook",
            codebook.fingerprint,
            f"{km_path} was made with codebook {meta['codebook_fingerprint']}; re-run quantize",
        )
    alignments = (
        read_alignments(config.data.alignments, config.data.alignment_rate_hz) if config.data.alignments else {}
    )
    phones: dict[str, int] = {}
    joint: list[tuple[torch.Tensor, torch.Tensor]] = []
    accumulator = MetricsAccumulator(codebook.centroids, store.frame_rate_hz)
    with km_path.open() as km:
        for features in tqdm(
            store.iter_utterances(), total=len(store.utterances), desc="evaluate", unit="utt", disable=None
        ):
            line = km.readline()
            units = torch.tensor([int(u) for u in line.split()], dtype=torch.long)
            if units.numel() != features.num_frames:
                raise ConfigError(
                    "data.split",
                    config.data.split,
                    f"{km_path} does not match the features at {features.utt_id!r}; re-run quantize",
                )
            accumulator.add(codebook.normalize(features.frames), units)
            if features.utt_id in alignments:
                joint.append(
                    _paired_labels(
                        features.utt_id, units, alignments[features.utt_id], phones, store.frame_rate_hz, config
                    )
                )
    metrics = {"codebook_fingerprint": codebook.fingerprint, **accumulator.result()}
    if joint:
        phone_ids = torch.cat([p for p, _ in joint])
        unit_ids = torch.cat([u for _, u in joint])
        counts = torch.zeros(len(phones), codebook.codebook_size, dtype=torch.long)
        counts.index_put_((phone_ids, unit_ids), torch.ones_like(unit_ids), accumulate=True)
        metrics["alignment"] = {
            "num_utterances": len(joint),
            "num_frames": int(unit_ids.numel()),
            "num_phones": len(phones),
            **phone_unit_scores(counts),
        }
    elif alignments:
        raise AlignmentError(config.data.alignments, "no utterance id matches the dataset's ids")
    metrics["counts"] = result.counts
    io.write_json(result.run_dir / METRICS_FILE, metrics)
    if config.evaluate.plot:
        plot_codebook_usage(
            accumulator.counts,
            result.run_dir / USAGE_PLOT_FILE,
            f"codebook usage: {metrics['codes_used']}/{metrics['codebook_size']} codes, "
            f"perplexity {metrics['perplexity']:.1f}",
        )
    result.metrics = metrics


def _paired_labels(utt_id, units, labels, phones, unit_rate_hz, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each unit frame to the label frame at the same time; trim the small length difference
    that framing conventions leave, and refuse a larger one (a sign of mismatched files)."""
    ratio = config.data.alignment_rate_hz / unit_rate_hz
    expected = round(len(labels) / ratio)
    if abs(expected - units.numel()) > config.evaluate.alignment_tolerance_frames:
        raise AlignmentError(
            utt_id,
            f"{len(labels)} labels at {config.data.alignment_rate_hz} Hz cover "
            f"{expected} unit frames, but there are {units.numel()}",
        )
    label_index = (torch.arange(units.numel()) * ratio).long()
    keep = label_index < len(labels)
    phone_ids = torch.tensor(
        [phones.setdefault(labels[i], len(phones)) for i in label_index[keep].tolist()], dtype=torch.long
    )
    return phone_ids, units[keep]


# ---------------------------------------------------------------- report


def format_report(result: RunResult) -> str:
    rows: list[tuple[str, str]] = [("run folder", str(result.run_dir))]
    for stage, seconds in result.stage_seconds.items():
        rows.append((f"time {stage}", f"{seconds:.1f} s"))
    if result.counts:
        rows.append(
            (
                "files found / processed / skipped",
                f"{result.counts.get('found')} / {result.counts.get('processed')} / {result.counts.get('skipped')}",
            )
        )
    m = result.metrics
    if m:
        rows += [
            ("utterances / frames", f"{m['num_utterances']} / {m['num_frames']} ({m['duration_s']:.1f} s)"),
            ("codebook", f"K={m['codebook_size']} fingerprint {m['codebook_fingerprint']}"),
            ("MSE / relative MSE", f"{m['mse']:.4g} / {m['relative_mse']:.4f}"),
            ("SQNR", f"{m['sqnr_db']:.2f} dB"),
            ("usage (dead codes)", f"{m['usage']:.3f} ({m['dead_codes']})"),
            ("perplexity / entropy", f"{m['perplexity']:.1f} / {m['entropy_bits']:.3f} bits/frame"),
            ("bitrate fixed / entropy", f"{m['bitrate_bps']:.0f} / {m['entropy_bitrate_bps']:.0f} bit/s"),
            ("after dedup", f"{m['dedup_units_per_s']:.1f} units/s, {m['dedup_bitrate_bps']:.0f} bit/s"),
        ]
        if "alignment" in m:
            a = m["alignment"]
            rows += [
                ("aligned utterances / phones", f"{a['num_utterances']} / {a['num_phones']}"),
                ("PNMI", f"{a['pnmi']:.4f}"),
                ("phone purity / cluster purity", f"{a['phone_purity']:.4f} / {a['cluster_purity']:.4f}"),
            ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
