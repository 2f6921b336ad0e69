from __future__ import annotations

from typing import Protocol

import torch

from ..config import FeatureConfig


class FeatureExtractor(Protocol):
    config: FeatureConfig
    dim: int  # feature dimension
    frame_rate_hz: float

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        """(num_samples,) float32 at config.sample_rate -> (num_frames, dim) float32, on samples' device."""

    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several waveforms at once -> their frames, each equal to what __call__ gives alone."""

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of `num_samples` samples."""

    def describe(self) -> dict:
        """What decides the features: the config, plus the weights' fingerprint for learned extractors."""

    # Family traits, read by the pipeline instead of the family's name:
    needs_weights: bool  # built from a checkpoint: not built at start-up, only when the data is first seen
    checkpoint_defaults_to_run: bool  # no features.checkpoint = the model the run's train_encoder stage makes


def build_extractor(config: FeatureConfig) -> FeatureExtractor:
    """The extractor of the family config.name names (see FEATURES in speechvq.features)."""
    from . import FEATURES

    return FEATURES.get(config.name)(config)


def normalize_utterance(frames: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance CMVN: zero mean, unit variance per dimension over the utterance's frames."""
    if frames.shape[0] < 2:
        return frames - frames.mean(dim=0, keepdim=True) if frames.shape[0] else frames
    mean = frames.mean(dim=0, keepdim=True)
    std = frames.std(dim=0, unbiased=False, keepdim=True)
    return (frames - mean) / (std + eps)
