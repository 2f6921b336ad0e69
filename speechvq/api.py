"""The Python API: whatever a run made (a k-means codebook over any feature family, or a trained encoder's own
quantizer) as one object that turns waveforms into the same units as the CLI's quantize stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from .audio import resample
from .codebook import Codebook, load_codebook
from .config import FeatureConfig
from .errors import MissingArtifactError, SpeechVQError
from .features import build_extractor
from .features.base import as_stored
from .reconstruct import build_inversion
from .run_folder import RunFolder
from .units import EncoderUnits, KMeansUnits


class UnitEncoder:
    """Waveform -> units with the exact features, normalization and unit model of a run.

    Units are (num_frames,) int64 for one codebook, (num_frames, num_codebooks) for several (residual, product,
    gumbel groups). Plain tensors and modules only, so it pickles into DataLoader workers."""

    def __init__(self, unit_model: KMeansUnits | EncoderUnits, feature_config: dict, device="cpu"):
        self.unit_model = unit_model
        self.device = torch.device(device)
        known = {f.name for f in dataclasses.fields(FeatureConfig)}
        self.feature_config = FeatureConfig(**{k: v for k, v in feature_config.items() if k in known})
        self.extractor = build_extractor(self.feature_config)
        unit_model.check_compatible(self.extractor.describe(), self.extractor.dim)
        self._inversion = None

    codebook = property(lambda self: self.unit_model.codebook)  # k-means runs: the Codebook
    frame_rate_hz = property(lambda self: self.extractor.frame_rate_hz)
    codebook_size = property(lambda self: self.unit_model.codebook_size)
    num_codebooks = property(lambda self: self.unit_model.num_codebooks)

    def _samples(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        samples = torch.as_tensor(waveform, dtype=torch.float32)
        if samples.ndim == 2:
            samples = samples.mean(dim=0)
        if samples.ndim != 1:
            raise ValueError(f"waveform must be (num_samples,) or (channels, num_samples), got {tuple(samples.shape)}")
        return resample(samples, sample_rate, self.feature_config.sample_rate).to(self.device)

    def _frames(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """The frames as the run stored them (rounded to features.store_dtype)."""
        return as_stored(self.extractor(self._samples(waveform, sample_rate)), self.feature_config.store_dtype)

    @torch.inference_mode()
    def features(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """(num_samples,) or (channels, num_samples) audio at sample_rate -> (num_frames, dim) float32, in the
        space the units are assigned in (normalized as a k-means codebook expects)."""
        return self.unit_model.normalize(self._frames(waveform, sample_rate))

    @torch.inference_mode()
    def encode(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """Audio -> units on the encoder's device."""
        return self._assign(self._frames(waveform, sample_rate))

    @torch.inference_mode()
    def encode_batch(self, waveforms: list[torch.Tensor | np.ndarray], sample_rate: int) -> list[torch.Tensor]:
        """Several files in batched feature extraction (padded and masked where the family batches); each result
        equals encode() of that file alone."""
        frames = self.extractor.extract_batch([self._samples(wave, sample_rate) for wave in waveforms])
        return [self._assign(as_stored(part, self.feature_config.store_dtype)) for part in frames]

    def _assign(self, frames: torch.Tensor) -> torch.Tensor:
        units = self.unit_model.assign(frames)
        return units[:, 0] if units.shape[1] == 1 else units

    @torch.inference_mode()
    def decode(self, units: torch.Tensor) -> torch.Tensor:
        """Units -> the log-mel they stand for (num_frames, 80), Kaldi 80-bin at 100 Hz, through the same inversion
        the evaluate stage scores (MFCC cepstra, fbank, or a reconstruction encoder's decoder)."""
        if self._inversion is None:
            self._inversion = build_inversion(self.extractor.describe()) or False
        if self._inversion is False:
            raise SpeechVQError(f"units of features={self.feature_config.name} have no decoder to a log-mel")
        units = torch.as_tensor(units).cpu()
        frames = self.unit_model.lookup(units.view(-1, 1) if units.ndim == 1 else units)
        return self._inversion.logmel(self.unit_model.denormalize(frames))


def load(path: str | Path, device: str | torch.device = "cpu") -> UnitEncoder:
    """A run folder (its k-means codebook, or the encoder quantizer its units came from) or a codebook file."""
    path = Path(path)
    folder = RunFolder(path)
    if path.is_file():
        return _kmeans(load_codebook(path), device)
    if folder.units_meta_file.exists():
        meta = folder.read_units_meta("load")
        if meta.quantizer != "kmeans":
            from .encoder.checkpoint import load_encoder

            model, model_meta = load_encoder(meta.feature_config["checkpoint"])
            return UnitEncoder(EncoderUnits(model, model_meta), meta.feature_config, device)
    if not folder.codebook.exists():
        raise MissingArtifactError(folder.codebook, "load")
    return _kmeans(load_codebook(folder.codebook), device)


def _kmeans(codebook: Codebook, device) -> UnitEncoder:
    return UnitEncoder(KMeansUnits(codebook), codebook.feature_config, device)
