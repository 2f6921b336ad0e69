"""The train_encoder stage: train the encoder (a conv VQ-VAE) on a capped subset of the dataset's audio."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import DataConfig, FeatureConfig, TrainEncoderConfig
from ..data import check_files, iter_waveforms
from ..errors import EmptyDatasetError
from ..manifest import list_utterances
from ..plots import loss_curve_png
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
    from ..encoder.train import train_encoder_model

    good, skipped = check_files(list_utterances(data.path), data.on_error)
    rate = features.sample_rate
    waves, seconds = [], 0.0
    for waveform in iter_waveforms(good, rate, data.num_workers, data.on_error, skipped):
        waves.append(waveform.samples)
        seconds += waveform.duration_s
        if seconds >= train.max_train_seconds:
            break
    if len(waves) < 2:
        raise EmptyDatasetError(data.path, "train_encoder needs at least 2 readable files")
    log.info("train_encoder: %d utterances, %.1f s of audio, %d steps on %s", len(waves), seconds, train.steps, device)
    _, history = train_encoder_model(train, waves, folder.encoder_dir, device, seed, rate)
    loss_curve_png(history, folder.loss_curve)
    return TrainedEncoder(train.steps, history[-1]["loss"] if history else None)
