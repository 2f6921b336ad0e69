from __future__ import annotations

from typing import Protocol

import torch

from ..config import FeatureConfig
from ..errors import ConfigError


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


def build_extractor(config: FeatureConfig) -> FeatureExtractor:
    from .conv import ConvEncoderExtractor
    from .mfcc import FbankExtractor, KaldiMFCCExtractor, LibrosaMFCCExtractor
    from .ssl import SSLExtractor

    families = {
        "mfcc_hubert": KaldiMFCCExtractor,
        "mfcc": LibrosaMFCCExtractor,
        "fbank": FbankExtractor,
        "conv_encoder": ConvEncoderExtractor,
        "ssl": SSLExtractor,
    }
    if config.name not in families:
        raise ConfigError("features.name", config.name, f"choose one of {sorted(families)}")
    if config.normalize not in ("none", "utterance", "global"):
        raise ConfigError("features.normalize", config.normalize, "choose none, utterance or global")
    return families[config.name](config)


def normalize_utterance(frames: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance CMVN: zero mean, unit variance per dimension over the utterance's frames."""
    if frames.shape[0] < 2:
        return frames - frames.mean(dim=0, keepdim=True) if frames.shape[0] else frames
    mean = frames.mean(dim=0, keepdim=True)
    std = frames.std(dim=0, unbiased=False, keepdim=True)
    return (frames - mean) / (std + eps)
