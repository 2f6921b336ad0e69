"""HuBERT's iterations in one run (iteration.count > 0, e.g. experiment=hubert_iteration).

Iteration 1: MFCC features (features=mfcc_hubert, fairseq's recipe) and k-means on iteration.train_data.
Iteration i > 1: masked prediction (train_encoder) of iteration i-1's units on that audio, then k-means on layer
features.layer of the new model. Each iteration's folder holds `targets/` (the k-means run on the training audio,
whose units the next iteration predicts; it holds the model too) and `units/` (that codebook applied to data.path,
with its metrics). iterations.json and the log compare the iterations.

Every sub-run is an ordinary run folder, so a killed iteration run resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from . import fileio
from .checks import check_config
from .config import FeatureConfig, RunConfig, Stage
from .pipeline import run
from .ranks import process_group
from .run_folder import RunFolder

log = logging.getLogger(__name__)


def run_iterations(config: RunConfig, run_dir: str | Path):
    """The last iteration's evaluation (a pipeline.RunSummary); iterations.json in run_dir."""
    check_config(config)
    root = RunFolder(run_dir)
    train_data = config.iteration.train_data or config.data.path
    count = config.iteration.count
    config = dataclasses.replace(config, iteration=dataclasses.replace(config.iteration, count=0))  # sub-runs
    rows, summary = [], None
    for number in range(1, count + 1):
        targets, units = root.iteration_runs(number)
        train_config = _targets_config(config, number, train_data, root.iteration_runs(number - 1)[0])
        trained = run(train_config, targets)
        features = dataclasses.replace(train_config.features, checkpoint=str(targets) if number > 1 else None)
        summary = run(
            dataclasses.replace(
                config,
                features=features,
                codebook=dataclasses.replace(config.codebook, path=str(targets)),
                stages=[Stage["features"], Stage["quantize"], Stage["evaluate"]],
            ),
            units,
        )
        rows.append(_row(number, trained, summary))
        log.info("%s", _describe(rows[-1]))
    if process_group()[0] != 0:  # under torchrun the metrics are gathered on rank 0; the others have none
        return summary
    fileio.write_json(root.iterations_summary, rows)
    log.info("iterations (units on %s):\n%s", config.data.path, "\n".join(_describe(r) for r in rows))
    return summary


def _targets_config(config: RunConfig, number: int, train_data: str, previous: Path) -> RunConfig:
    """Iteration `number`'s run on the training audio: k-means on MFCC (1) or on the new model's layer (> 1)."""
    data = dataclasses.replace(config.data, path=train_data, alignments=None)
    stages = [Stage["features"], Stage["train"], Stage["quantize"]]
    if number == 1:
        return dataclasses.replace(config, data=data, features=FeatureConfig(), stages=stages)
    objective = dataclasses.replace(config.train_encoder.objective, targets=str(previous))
    train_encoder = dataclasses.replace(config.train_encoder, objective=objective, data_path=None)
    return dataclasses.replace(
        config,
        data=data,
        features=dataclasses.replace(config.features, checkpoint=None),  # this run's own model
        train_encoder=train_encoder,
        stages=[Stage["train_encoder"], *stages],
    )


def _row(number: int, trained, summary) -> dict:
    metrics = summary.metrics
    alignment = metrics.get("alignment", {})
    return {
        "iteration": number,
        "train_encoder_s": _training_seconds(trained.run_dir),
        "pnmi": alignment.get("pnmi"),
        "pnmi_groups": {g: s["pnmi"] for g, s in alignment.get("groups", {}).items()},
        "phone_purity": alignment.get("phone_purity"),
        "cluster_purity": alignment.get("cluster_purity"),
        "word_probe": metrics.get("word_probe", {}).get("accuracy"),
        "units_folder": str(summary.run_dir),
    }


def _training_seconds(run_dir: Path) -> float:
    """The model's own training time (its history's clock continues across resumes), not this process's: a
    rerun that resumes or skips train_encoder would otherwise report seconds or nothing."""
    meta = RunFolder(run_dir).encoder_model.with_suffix(".json")
    return float(json.loads(meta.read_text())["final"].get("elapsed_s", 0.0)) if meta.exists() else 0.0


def _describe(row: dict) -> str:
    parts = [f"iteration {row['iteration']}"]
    if row["pnmi"] is not None:
        parts.append(f"PNMI {row['pnmi']:.4f}")
        parts += [f"{group} {value:.4f}" for group, value in row["pnmi_groups"].items()]
    if row["word_probe"] is not None:
        parts.append(f"word probe {row['word_probe']:.3f}")
    parts.append(f"training {row['train_encoder_s'] / 60:.1f} min")
    return ", ".join(parts)
