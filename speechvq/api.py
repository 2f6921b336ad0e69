"""The Python API: a trained codebook plus its feature extractor, turning waveforms into units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from .audio import resample
from .codebook import Codebook, load_codebook
from .config import FeatureConfig
from .features import build_extractor
from .quantize import nearest_codewords


class UnitEncoder:
    """Waveform -> units with the exact features and normalization the codebook was trained on.

    Plain tensors only, so it pickles into DataLoader workers for on-the-fly tokenization."""

    def __init__(self, codebook: Codebook, device: str | torch.device = "cpu"):
        self.codebook = codebook
        self.device = torch.device(device)
        known = {f.name for f in dataclasses.fields(FeatureConfig)}
        self.feature_config = FeatureConfig(**{k: v for k, v in codebook.feature_config.items() if k in known})
        self.extractor = build_extractor(self.feature_config)
        self._centroids = codebook.centroids.to(self.device)

    @property
    def frame_rate_hz(self) -> float:
        return self.extractor.frame_rate_hz

    @property
    def codebook_size(self) -> int:
        return self.codebook.codebook_size

    @torch.inference_mode()
    def features(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """(num_samples,) or (channels, num_samples) audio at sample_rate -> (num_frames, dim) float32,
        normalized as the codebook expects."""
        samples = torch.as_tensor(waveform, dtype=torch.float32)
        if samples.ndim == 2:
            samples = samples.mean(dim=0)
        if samples.ndim != 1:
            raise ValueError(f"waveform must be (num_samples,) or (channels, num_samples), got {tuple(samples.shape)}")
        samples = resample(samples, sample_rate, self.feature_config.sample_rate).to(self.device)
        return self.codebook.normalize(self.extractor(samples))

    @torch.inference_mode()
    def encode(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """Audio -> units (num_frames,) int64 on the encoder's device."""
        units, _ = nearest_codewords(self.features(waveform, sample_rate), self._centroids)
        return units


def load(path: str | Path, device: str | torch.device = "cpu") -> UnitEncoder:
    """Load a run folder or a codebook file as a UnitEncoder."""
    return UnitEncoder(load_codebook(path), device)
