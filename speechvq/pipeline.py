"""Runs the stages of speechvq.stages in order and assembles the summary. No Hydra here, and no stage logic:
each stage gets the config sections it reads, the run folder and the device, and returns a frozen value."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import fileio, run_lock
from .checks import check_config
from .config import MergeConfig, RunConfig, Stage
from .errors import ConfigError
from .featstore import INDEX_FILE, FeatureStore
from .features import FEATURES, build_extractor
from .ranks import distributed, process_group
from .report import format_report, summary_rows
from .report_html import write_report
from .run_folder import FileCounts, RunFolder
from .stages import evaluate, extract_features, merge_shards, quantize_dataset, train_codebook, train_encoder
from .units import UNIT_KINDS

__all__ = ["RunSummary", "format_report", "resolve_device", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # found / processed / skipped
    metrics: dict = field(default_factory=dict)
    report: Path | None = None  # report.html, written when the evaluate stage ran


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N; anything else (a misspelling, another backend) is a ConfigError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError("device", name, "choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError("device", name, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def prepare(config: RunConfig, run_dir: str | Path) -> tuple[RunConfig, torch.device]:
    """Every check that needs no data, before anything is written; the config with run-dependent defaults."""
    check_config(config)
    if config.iteration.count:
        raise ConfigError(
            "iteration.count", config.iteration.count, "a pipeline run is one iteration: speechvq.job.run runs them all"
        )
    device = resolve_device(config.device)
    for key in ("codebook.precision", "quantize.precision"):
        if getattr(config, key.split(".")[0]).precision == "fast" and device.type != "cuda":
            raise ConfigError(key, "fast", f"uses TF32 and needs CUDA; this run is on {device}: use exact")
    family = FEATURES.get(config.features.name)
    if family.checkpoint_defaults_to_run and not config.features.checkpoint:
        # the model train_encoder makes (or made) in this run folder; a copy, so the caller's config is untouched
        config = dataclasses.replace(config, features=dataclasses.replace(config.features, checkpoint=str(run_dir)))
    if not family.needs_weights:
        build_extractor(config.features)  # checks what only the extractor knows (e.g. cepstra vs mel bins)
    return config, device


def run(config: RunConfig, run_dir: str | Path) -> RunSummary:
    """The stages of one run (HuBERT's iterations are runs of runs: speechvq.job.run)."""
    config, device = prepare(config, run_dir)
    folder = RunFolder(run_dir)
    folder.root.mkdir(parents=True, exist_ok=True)
    # One writer per folder; under torchrun rank 0 holds it for all ranks (they write into ranks/<r>/).
    with run_lock.hold(folder.root, folder.lock_file) if process_group()[0] == 0 else contextlib.nullcontext():
        return _run_stages(config, folder, device)


def _run_stages(config: RunConfig, folder: RunFolder, device: torch.device) -> RunSummary:
    log.info("run folder %s, device %s, stages %s", folder.root, device, [str(s) for s in config.stages])
    by_rank = distributed() and config.data.num_shards == 1 and "features" in config.stages
    seconds, results = {}, {}
    for stage in Stage:  # canonical order, whatever order the config lists them in
        if stage in config.stages and not (by_rank and stage != Stage["train_encoder"]):
            start = time.perf_counter()
            results[stage.value] = _STAGES[stage](config, folder, device, False)
            seconds[stage.value] = time.perf_counter() - start
    if by_rank:  # train_encoder (data parallel across the ranks) has run; the rest by shard
        return _run_by_rank(config, folder, device, seconds)
    return _summary(folder, seconds, results)


# What each stage reads: (config, folder, device, per_rank) -> the stage's arguments. The one place that maps
# a stage name to its function.
_STAGES = {
    Stage["train_encoder"]: lambda c, f, d, r: train_encoder(c.train_encoder, c.data, c.features, c.seed, f, d),
    Stage["features"]: lambda c, f, d, r: extract_features(
        c.data, c.features, c.output.overwrite, f, d, c.codebook.max_train_frames, c.seed
    ),
    Stage["train"]: lambda c, f, d, r: train_codebook(
        c.codebook, c.data, c.features, c.seed, c.output.overwrite, f, d, per_rank=r
    ),
    Stage["quantize"]: lambda c, f, d, r: quantize_dataset(
        c.codebook, c.quantize, c.data, c.features, c.output.overwrite, f, d
    ),
    Stage["evaluate"]: lambda c, f, d, r: evaluate(c.evaluate, c.data, c.features, c.codebook, c.quantize, f, d),
    Stage["merge"]: lambda c, f, d, r: merge_shards(c.merge, f),
}


def _summary(folder: RunFolder, seconds: dict, results: dict) -> RunSummary:
    counts = results.get("merge")
    if "quantize" in results:  # the whole dataset's, also where the features stage kept only a sample
        counts = results["quantize"].counts
    elif results.get("features") is not None:
        counts = results["features"]
    if counts is None and (folder.features_dir / INDEX_FILE).exists():
        counts = FileCounts(**FeatureStore(folder.features_dir).index.get("counts", {}))
    summary = RunSummary(folder.root, seconds, counts.to_dict() if counts else {}, results.get("evaluate") or {})
    if summary.metrics:
        summary = dataclasses.replace(summary, report=write_report(folder, summary_rows(summary), summary.metrics))
    return summary


def _run_by_rank(config: RunConfig, folder: RunFolder, device: torch.device, seconds: dict) -> RunSummary:
    """Under torchrun: rank r takes shard r of the data (fairseq's rule) into ranks/<r>/, k-means is trained
    across ranks on their own features, every rank quantizes its shard, rank 0 merges the shards into the run
    folder (with merge's checks), and evaluate scans each rank's shard and gathers the results on rank 0.
    seconds: the times of the stages already run (train_encoder, data parallel); this adds the others'."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank_folder = folder.rank(rank)
    rank_folder.root.mkdir(parents=True, exist_ok=True)
    rank_config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_shards=world, shard_index=rank))
    trains = UNIT_KINDS.get(config.codebook.name).trains_codebook
    trained_here = "train" in config.stages and not config.codebook.path and trains
    for stage in ("features", "train", "quantize"):
        if stage not in config.stages:
            continue
        if stage == "quantize" and trained_here:  # every rank quantizes with the codebook rank 0 wrote
            rank_config = dataclasses.replace(
                rank_config, codebook=dataclasses.replace(config.codebook, path=str(folder.rank(0).root))
            )
        start = time.perf_counter()
        _STAGES[Stage[stage]](rank_config, rank_folder, device, True)
        seconds[stage] = time.perf_counter() - start
        torch.distributed.barrier()
    counts = None
    if rank == 0 and "quantize" in config.stages:
        counts = merge_shards(MergeConfig(inputs=str(folder.ranks_dir)), folder)
        if trained_here:
            for name in (folder.codebook, folder.codebook_json):
                fileio.write_bytes(name, (rank_folder.root / name.name).read_bytes())
    torch.distributed.barrier()
    metrics = _evaluate_by_rank(config, rank_config, folder, rank_folder, device, seconds)
    summary = RunSummary(folder.root, seconds, counts.to_dict() if counts else {}, metrics)
    if metrics:
        summary = dataclasses.replace(summary, report=write_report(folder, summary_rows(summary), metrics))
    return summary


def _evaluate_by_rank(config, rank_config, folder: RunFolder, rank_folder: RunFolder, device, seconds) -> dict:
    """The metrics of the whole run on rank 0 ({} elsewhere); the resynthesized examples are rank 0's first files,
    which are the dataset's first, as in a single process."""
    if "evaluate" not in config.stages or "quantize" not in config.stages:
        return {}
    rank = torch.distributed.get_rank()
    settings = config.evaluate if rank == 0 else dataclasses.replace(config.evaluate, resynthesize=0)
    start = time.perf_counter()
    metrics = evaluate(
        settings, rank_config.data, config.features, rank_config.codebook, config.quantize, rank_folder, device, folder
    )
    seconds["evaluate"] = time.perf_counter() - start
    if rank == 0 and rank_folder.resynth_dir.exists():
        shutil.copytree(rank_folder.resynth_dir, folder.resynth_dir, dirs_exist_ok=True)
    torch.distributed.barrier()
    return metrics
