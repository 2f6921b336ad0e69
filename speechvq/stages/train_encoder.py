"""The train_encoder stage: train an encoder (train_encoder.objective) on a capped subset of the dataset's audio
(or of train_encoder.data_path)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..config import DataConfig, FeatureConfig, TrainEncoderConfig
from ..data import check_files, iter_waveforms
from ..encoder.batches import targets_at_rate
from ..errors import ConfigError, EmptyDatasetError
from ..manifest import list_utterances
from ..plots import loss_curve_png
from ..ranks import process_group
from ..run_folder import RunFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedEncoder:
    steps: int
    final_loss: float | None


def train_encoder(
    train: TrainEncoderConfig,
    data: DataConfig,
    features: FeatureConfig,
    seed: int,
    folder: RunFolder,
    device: torch.device,
) -> TrainedEncoder:
    """The audio (up to train.max_train_seconds) is held in memory: training crops are drawn from it."""
    from ..encoder import OBJECTIVES
    from ..encoder.train import train_encoder_model

    objective = OBJECTIVES.get(train.objective.name)
    targets, num_units = _targets(train, objective) if objective.needs_targets else (None, None)
    source = train.data_path or data.path
    good, skipped = check_files(list_utterances(source), data.on_error)
    if targets is not None:  # only utterances the target run has units for
        good = [u for u in good if u.utt_id in targets]
    rate = features.sample_rate
    waves, labels, seconds, checked_skips = [], [], 0.0, len(skipped)
    for waveform in iter_waveforms(good, rate, data.num_workers, data.on_error, skipped):
        waves.append(waveform.samples)
        if targets is not None:
            labels.append(targets[waveform.utt_id])
        seconds += waveform.duration_s
        if seconds >= train.max_train_seconds:
            break
    if len(waves) < 2:
        raise EmptyDatasetError(source, "train_encoder needs at least 2 readable files (with targets, if any)")
    left_out = len(good) - len(waves) - (len(skipped) - checked_skips)  # not read: the seconds cap was reached
    if left_out:
        log.warning("train_encoder: train_encoder.max_train_seconds=%g reached after %d of %d files of %s; the "
                    "other %d (the last in listing order) are not trained on", train.max_train_seconds, len(waves),
                    len(good), source, left_out)  # fmt: skip
    log.info("train_encoder: %d utterances, %.1f s of audio, %d steps on %s (%d process(es))", len(waves), seconds,
             train.steps, device, process_group()[1])  # fmt: skip
    _, history = train_encoder_model(
        train, waves, folder.encoder_dir, device, seed, rate, labels if targets is not None else None, num_units
    )
    if process_group()[0] == 0:
        loss_curve_png(history, folder.loss_curve)
    return TrainedEncoder(train.steps, history[-1]["loss"] if history else None)


def _targets(train: TrainEncoderConfig, objective) -> tuple[dict[str, torch.Tensor], int]:
    """utt_id -> target units at the model's frame rate (HuBERT's mapping), and the number of distinct units."""
    source = RunFolder(train.objective.targets)
    meta = source.read_units_meta("train_encoder")
    if meta.num_codebooks != 1:
        raise ConfigError("train_encoder.objective.targets", str(source.root), "targets must be single-codebook units")
    out = {}
    for utt_id, units in source.read_units().items():
        num_frames = math.ceil(len(units) * objective.frame_rate_hz / meta.frame_rate_hz)
        out[utt_id] = targets_at_rate(torch.tensor(units), meta.frame_rate_hz, objective.frame_rate_hz, num_frames)
    log.info("train_encoder: %d target sequences (K=%d, %g Hz) from %s", len(out), meta.codebook_size,
             meta.frame_rate_hz, source.root)  # fmt: skip
    return out, meta.codebook_size
