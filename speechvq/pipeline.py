"""The stages of a run, wired with typed inputs and outputs: orchestration, resume bookkeeping, and the
train_encoder / features / train / quantize stages (evaluate and merge have their own modules). Each stage
reads the artifacts of the stage before it from the run folder, so any subset can run. No Hydra here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import io
from .artifacts import (
    ERRORS_FILE,
    FEATURES_DIR,
    MARKERS_DIR,
    UNITS_META_FILE,
    RunResult,
    open_features,
    stream_names,
    unit_files_record,
    unit_model,
)
from .codebook import Codebook, kmeans
from .codebook.codebook import CODEBOOK_FILE
from .config import MergeConfig, RunConfig, check_config
from .data import check_files, iter_waveforms
from .errors import ConfigError, EmptyDatasetError
from .evaluate import evaluate
from .featstore import FeatureStore, FeatureWriter
from .features import build_extractor
from .manifest import list_utterances, shard
from .merge import merge_shards
from .report import format_report
from .types import FeatureMatrix, SkippedFile

__all__ = ["STAGES", "RunResult", "format_report", "resolve_device", "run"]

log = logging.getLogger(__name__)

STAGES = ("train_encoder", "features", "train", "quantize", "evaluate", "merge")


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
    check_config(config)
    device = resolve_device(config.device)
    for key in ("codebook.precision", "quantize.precision"):
        section = getattr(config, key.split(".")[0])
        if section.precision == "fast" and device.type != "cuda":
            raise ConfigError(key, "fast", f"uses TF32 and needs CUDA; this run is on {device}: use exact")
    if config.features.name == "conv_encoder" and not config.features.checkpoint:
        # the model train_encoder makes (or made) in this run folder; a copy, so the caller's config is untouched
        config = dataclasses.replace(config, features=dataclasses.replace(config.features, checkpoint=str(run_dir)))
    if config.features.name not in ("conv_encoder", "ssl"):
        build_extractor(config.features)  # validates the feature config before any work
    result = RunResult(Path(run_dir))
    result.run_dir.mkdir(parents=True, exist_ok=True)
    log.info("run folder %s, device %s, stages %s", result.run_dir, device, list(config.stages))
    stage_functions = {
        "train_encoder": train_encoder,
        "features": extract_features,
        "train": train_codebook,
        "quantize": quantize_dataset,
        "evaluate": evaluate,
        "merge": merge_shards,
    }
    if _distributed() and config.data.num_shards == 1 and "features" in config.stages:
        return _run_by_rank(config, result, device, stage_functions)
    for stage in STAGES:  # canonical order, whatever order the config lists them in
        if stage in config.stages:
            start = time.perf_counter()
            stage_functions[stage](config, result, device)
            result.stage_seconds[stage] = time.perf_counter() - start
    return result


def _run_by_rank(config: RunConfig, result: RunResult, device: torch.device, stage_functions) -> RunResult:
    """Under torchrun: rank r takes shard r of the data (fairseq's rule) into ranks/<r>/, k-means is trained
    across ranks on their own features, every rank quantizes its shard, and rank 0 merges the shards into the
    run folder (with merge's checks). evaluate, which needs all features in one place, is left to a later run."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank_result = RunResult(result.run_dir / "ranks" / f"{rank:03d}", per_rank=True)
    rank_result.run_dir.mkdir(parents=True, exist_ok=True)
    rank_config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_shards=world, shard_index=rank))
    trained_here = "train" in config.stages and not config.codebook.path and config.codebook.name == "kmeans"
    for stage in ("features", "train", "quantize"):
        if stage not in config.stages:
            continue
        if stage == "quantize" and trained_here:
            rank_config.codebook = dataclasses.replace(config.codebook, path=str(result.run_dir / "ranks" / "000"))
        start = time.perf_counter()
        stage_functions[stage](rank_config, rank_result, device)
        result.stage_seconds[stage] = time.perf_counter() - start
        torch.distributed.barrier()
    if rank == 0 and "quantize" in config.stages:
        merge_config = dataclasses.replace(config, merge=MergeConfig(inputs=str(result.run_dir / "ranks")))
        merge_shards(merge_config, result, device)
        if trained_here:
            for name in (CODEBOOK_FILE, Path(CODEBOOK_FILE).with_suffix(".json").name):
                io.write_bytes(result.run_dir / name, (rank_result.run_dir / name).read_bytes())
    if "evaluate" in config.stages:
        log.warning("evaluate is skipped under torchrun; run stages=[evaluate] on a rank folder or a single process")
    torch.distributed.barrier()
    return result


# ---------------------------------------------------------------- resume bookkeeping
# Each stage that finishes writes .speechvq/<stage>.json with a key of everything its outputs depend on. Run
# again with the same config, a finished stage is skipped; with a different one, the run stops rather than
# overwrite (unless output.overwrite=true). Unfinished stages resume from their own checkpoints.


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _features_key(config: RunConfig) -> str:
    d = config.data
    data = {
        "path": str(Path(d.path).expanduser().resolve()),
        "split": d.split,
        "on_error": d.on_error,
        "num_shards": d.num_shards,
        "shard_index": d.shard_index,
    }
    return _key("features", data, config.features.to_dict())


def _already_done(config: RunConfig, result: RunResult, stage: str, key: str) -> bool:
    marker = result.run_dir / MARKERS_DIR / f"{stage}.json"
    if not marker.exists():
        return False
    if json.loads(marker.read_text())["key"] == key:
        log.info("%s: already done in %s with this configuration; skipping", stage, result.run_dir)
        return True
    if config.output.overwrite:
        marker.unlink()
        return False
    raise ConfigError(
        "output.overwrite",
        False,
        f"{result.run_dir} holds '{stage}' outputs made with a different "
        "configuration; use a new run folder (hydra.run.dir=...) or output.overwrite=true",
    )


def _mark_done(result: RunResult, stage: str, key: str) -> None:
    io.write_json(result.run_dir / MARKERS_DIR / f"{stage}.json", {"key": key})


# ---------------------------------------------------------------- train_encoder


def train_encoder(config: RunConfig, result: RunResult, device: torch.device) -> None:
    """Train the conv VQ-VAE on (a capped subset of) the dataset's audio, held in memory."""
    from .learned.train import loss_curve_png, train_vqvae

    utterances = list_utterances(config.data.path)
    good, skipped = check_files(utterances, config.data.on_error)
    rate = config.features.sample_rate
    waves, seconds = [], 0.0
    for waveform in iter_waveforms(good, rate, config.data.num_workers, config.data.on_error, skipped):
        waves.append(waveform.samples)
        seconds += waveform.duration_s
        if seconds >= config.train_encoder.max_train_seconds:
            break
    if len(waves) < 2:
        raise EmptyDatasetError(config.data.path, "train_encoder needs at least 2 readable files")
    log.info(
        "train_encoder: %d utterances, %.1f s of audio, %d steps on %s",
        len(waves),
        seconds,
        config.train_encoder.steps,
        device,
    )
    _, history = train_vqvae(config.train_encoder, waves, result.run_dir / "encoder", device, config.seed, rate)
    loss_curve_png(history, result.run_dir / "loss_curve.png")


# ---------------------------------------------------------------- features


def extract_features(config: RunConfig, result: RunResult, device: torch.device) -> None:
    key = _features_key(config)
    if _already_done(config, result, "features", key):
        result.counts = FeatureStore(result.run_dir / FEATURES_DIR).index.get("counts", {})
        return
    listing = list_utterances(config.data.path)
    utterances = shard(listing, config.data.num_shards, config.data.shard_index)
    # The manifest root is the dataset's, not the shard's, so shard manifests concatenate into the full one.
    root = Path(os.path.commonpath([u.path.parent for u in listing]))
    found = len(utterances)
    good, skipped = check_files(utterances, config.data.on_error)
    extractor = build_extractor(config.features)
    writer = FeatureWriter(
        result.run_dir / FEATURES_DIR,
        extractor.describe(),
        extractor.dim,
        extractor.frame_rate_hz,
        part_bytes=int(config.data.part_mb * 2**20),
    )
    by_id = {u.utt_id: u for u in good}
    checked_skips = len(skipped)
    state = writer.resume(key) or {"consumed": 0, "skipped": []}
    if state["consumed"]:
        log.info(
            "features: resuming after %d of %d files (%d parts on disk)",
            state["consumed"],
            len(good),
            writer.entries[-1].part + 1 if writer.entries else 0,
        )
    skipped += [SkippedFile(utt_id, Path(path), reason) for utt_id, path, reason in state["skipped"]]
    processed = [by_id[entry.utt_id] for entry in writer.entries]
    consumed = state["consumed"]
    waveforms = iter_waveforms(
        good[consumed:], config.features.sample_rate, config.data.num_workers, config.data.on_error, skipped
    )
    batch_samples = config.data.batch_seconds * config.features.sample_rate
    with (
        torch.inference_mode(),
        tqdm(total=len(good), initial=consumed, desc="features", unit="utt", disable=None) as bar,
    ):
        for batch in _batches(waveforms, batch_samples):
            for waveform, frames in zip(batch, extractor.extract_batch([w.samples.to(device) for w in batch])):
                writer.add(FeatureMatrix(waveform.utt_id, frames, extractor.frame_rate_hz))
                processed.append(by_id[waveform.utt_id])
            bar.update(len(batch))
            decode_skips = skipped[checked_skips:]
            writer.checkpoint(
                key,
                {
                    "consumed": len(processed) + len(decode_skips),
                    "skipped": [[s.utt_id, str(s.path), s.reason] for s in decode_skips],
                },
            )
    _write_errors(result.run_dir / ERRORS_FILE, skipped)
    result.counts = {"found": found, "processed": len(processed), "skipped": len(skipped)}
    if found and not processed:
        raise EmptyDatasetError(config.data.path, f"all {found} files failed (see {ERRORS_FILE})")
    if not found:  # more shards than utterances: an empty shard is valid and merges as nothing
        log.warning("features: shard %d of %d is empty", config.data.shard_index, config.data.num_shards)
    io.write_fairseq_tsv(
        result.run_dir / f"{config.data.split}.tsv",
        root,
        ((u.path.relative_to(root).as_posix(), u.num_samples) for u in processed),
    )
    shard_info = {
        "index": config.data.shard_index,
        "num_shards": config.data.num_shards,
        "dataset_utterances": len(listing),
    }
    writer.close({"counts": result.counts, "source": str(config.data.path), "shard": shard_info})
    _mark_done(result, "features", key)
    log.info("features: %d processed, %d skipped of %d found", len(processed), len(skipped), found)


def _batches(waveforms, max_samples: float, max_items: int = 512):
    """Group consecutive waveforms until their total length reaches max_samples."""
    batch, total = [], 0
    for waveform in waveforms:
        batch.append(waveform)
        total += waveform.samples.numel()
        if total >= max_samples or len(batch) >= max_items:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _write_errors(path: Path, skipped: list[SkippedFile]) -> None:
    lines = ["utt_id\tpath\treason\n"] + [f"{s.utt_id}\t{s.path}\t{s.reason}\n" for s in skipped]
    io.write_text(path, "".join(lines))


# ---------------------------------------------------------------- train


def train_codebook(config: RunConfig, result: RunResult, device: torch.device) -> None:
    if config.codebook.path:
        log.info("train: reusing codebook %s, nothing to train", config.codebook.path)
        return
    if config.codebook.name == "learned":
        log.info("train: codebook=learned uses the train_encoder model's quantizer, nothing to train")
        return
    if config.codebook.name != "kmeans":
        raise ConfigError("codebook.name", config.codebook.name, "choose kmeans or learned")
    c = config.codebook
    key = _key(
        _features_key(config),
        "train",
        c.codebook_size,
        c.max_iter,
        c.tol,
        c.n_init,
        c.max_train_frames,
        c.precision,
        config.seed,
    )
    if _already_done(config, result, "train", key):
        return
    store = open_features(result)
    size = config.codebook.codebook_size
    if store.num_frames < size:
        raise ConfigError("codebook.codebook_size", size, f"larger than the {store.num_frames} frames available")
    mean = std = None
    if store.feature_config.get("normalize") == "global":
        mean, std = store.moments()
    sampler = torch.Generator().manual_seed(config.seed)
    cap = config.codebook.max_train_frames
    if result.per_rank:  # the cap is for the whole training set; each rank samples its share
        cap = max(1, cap // torch.distributed.get_world_size())
    take = min(store.num_frames, cap)
    indices = torch.randperm(store.num_frames, generator=sampler)[:take].sort().values
    frames = store.gather(indices)
    if mean is not None:
        frames = (frames - mean) / std
    if _distributed():
        fit = _train_distributed(frames, size, device, config, result.per_rank)
    else:
        generator = torch.Generator(device=device).manual_seed(config.seed)
        log.info(
            "train: k-means K=%d on %d of %d frames (dim %d) on %s", size, take, store.num_frames, store.dim, device
        )
        fit = kmeans(
            frames.to(device),
            size,
            generator=generator,
            max_iter=config.codebook.max_iter,
            tol=config.codebook.tol,
            n_init=config.codebook.n_init,
            chunk_size=config.codebook.chunk_size,
            progress=True,
            precision=config.codebook.precision,
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
    if not _distributed() or torch.distributed.get_rank() == 0:
        codebook.save(result.run_dir / CODEBOOK_FILE)
    _mark_done(result, "train", key)
    if _distributed():
        torch.distributed.barrier()  # no rank goes on to quantize before rank 0 has written the codebook
    log.info(
        "train: inertia %.6g after %d iterations; codebook %s", fit.inertia, fit.num_iterations, codebook.fingerprint
    )


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


def _train_distributed(
    frames: torch.Tensor, size: int, device: torch.device, config: RunConfig, result_is_rank_shard: bool
):
    """Under torchrun: rank r clusters its block of the sampled training frames (fairseq's sharding rule),
    all-reducing sums and counts; the codebook equals the single-process one up to float rounding."""
    from .codebook.distributed import distributed_kmeans

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if result_is_rank_shard:
        block = frames  # each rank sampled from its own shard's features
    else:  # one shared feature store: rank r takes its block of the sample
        local = shard(list(range(frames.shape[0])), world, rank)
        block = frames[local[0] : local[-1] + 1] if local else frames[:0]
    log.info("train: distributed k-means, rank %d of %d with %d frames", rank, world, block.shape[0])
    return distributed_kmeans(
        block.to(device),
        size,
        seed=config.seed,
        max_iter=config.codebook.max_iter,
        tol=config.codebook.tol,
        chunk_size=config.codebook.chunk_size,
    )


# ---------------------------------------------------------------- quantize


def quantize_dataset(config: RunConfig, result: RunResult, device: torch.device) -> None:
    store = open_features(result)
    units_model = unit_model(config, result)
    units_model.check_compatible(store.feature_config, store.dim)
    key = _key(_features_key(config), "quantize", units_model.fingerprint, config.quantize.dedup)
    if _already_done(config, result, "quantize", key):
        return
    split, out = config.data.split, result.run_dir
    streams = stream_names(split, units_model.num_codebooks)
    names = streams + ["units.jsonl"] + (["units_dedup.jsonl"] if config.quantize.dedup else [])
    # Units are written per feature part into .speechvq/units (a part is done when its .done file exists), then
    # concatenated; a rerun after a crash keeps the finished parts.
    parts_dir = out / MARKERS_DIR / "units"
    key_file = parts_dir / "key.json"
    if parts_dir.exists() and (not key_file.exists() or json.loads(key_file.read_text())["key"] != key):
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(key_file, {"key": key})
    done = 0
    with tqdm(total=len(store.utterances), desc="quantize", unit="utt", disable=None) as bar:
        for number, (entries, frames) in enumerate(store.iter_parts()):
            if (parts_dir / f"{number:05d}.done").exists():
                bar.update(len(entries))
                done += 1
                continue
            units = units_model.assign(frames.to(device)).cpu()  # (part_frames, num_codebooks)
            texts = {name: [] for name in names}
            for entry in entries:
                utt_units = units[entry.offset : entry.offset + entry.num_frames]
                for stream, name in enumerate(streams):
                    texts[name].append(io.units_to_line(utt_units[:, stream]) + "\n")
                listed = utt_units[:, 0].tolist() if len(streams) == 1 else utt_units.T.tolist()
                record = {
                    "id": entry.utt_id,
                    "units": listed,
                    "num_frames": entry.num_frames,
                    "frame_rate_hz": store.frame_rate_hz,
                }
                texts["units.jsonl"].append(json.dumps(record, separators=(",", ":")) + "\n")
                if config.quantize.dedup:
                    values, durations = io.deduplicate_rows(utt_units)
                    listed = values[:, 0].tolist() if len(streams) == 1 else values.T.tolist()
                    record = {"id": entry.utt_id, "units": listed, "durations": durations.tolist()}
                    texts["units_dedup.jsonl"].append(json.dumps(record, separators=(",", ":")) + "\n")
            for name, lines in texts.items():
                io.write_text(parts_dir / f"{number:05d}.{name}", "".join(lines))
            io.write_text(parts_dir / f"{number:05d}.done", "")
            bar.update(len(entries))
    if done:
        log.info("quantize: resumed, %d of %d parts were already done", done, store.index["num_parts"])
    for name in names:
        with io.atomic_open(out / name) as handle:
            for number in range(store.index["num_parts"]):
                handle.write((parts_dir / f"{number:05d}.{name}").read_text())
    io.write_km_dict(out / "dict.km.txt", units_model.codebook_size)
    contents = {
        name: f"fairseq labels (codebook {g}), one line per line of {split}.tsv" for g, name in enumerate(streams)
    }
    contents["units.jsonl"] = "id, units, num_frames, frame_rate_hz" + (
        "; units is one list per codebook" if len(streams) > 1 else ""
    )
    if config.quantize.dedup:
        contents["units_dedup.jsonl"] = (
            "id, run-length deduplicated units (all codebooks together), durations in frames"
        )
    files = unit_files_record(out, contents)
    io.write_json(
        out / UNITS_META_FILE,
        {
            "codebook_fingerprint": units_model.fingerprint,
            "quantizer": units_model.kind,
            "codebook_size": units_model.codebook_size,
            "num_codebooks": units_model.num_codebooks,
            "feature_config": store.feature_config,
            "frame_rate_hz": store.frame_rate_hz,
            "num_utterances": len(store.utterances),
            "num_frames": store.num_frames,
            "counts": store.index.get("counts", {}),
            "shard": store.index.get("shard", {"index": 0, "num_shards": 1}),
            "split": split,
            "files": files,
        },
    )
    _mark_done(result, "quantize", key)
    shutil.rmtree(parts_dir)
    log.info("quantize: %d utterances, %d frames -> %s", len(store.utterances), store.num_frames, out / streams[0])
