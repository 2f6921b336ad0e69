"""Decoding: any soundfile format -> mono float32 at the requested sample rate, validated."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from .errors import AudioDecodeError


def probe(path: Path) -> soundfile._SoundFileInfo:
    """Cheap header check (no decoding) so missing, empty and non-audio files fail early."""
    if not path.exists():
        raise AudioDecodeError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "file is empty (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(path, f"not a readable audio file ({exc})") from None
    if info.frames == 0:
        raise AudioDecodeError(path, "audio has zero samples")
    return info


def load_waveform(path: Path, sample_rate: int) -> torch.Tensor:
    """Decode `path`, average the channels and resample. Returns (num_samples,) float32."""
    probe(path)
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(path, f"decoding failed ({exc})") from None
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "audio has zero samples")
    if not np.isfinite(data).all():
        raise AudioDecodeError(path, "audio contains NaN or Inf samples")
    mono = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])
    return resample(mono, file_rate, sample_rate)


def resample(samples: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    if from_rate == to_rate:
        return samples.contiguous()
    return _resampler(int(from_rate), int(to_rate))(samples)


@functools.lru_cache(maxsize=16)
def _resampler(from_rate: int, to_rate: int) -> torchaudio.transforms.Resample:
    # The windowed-sinc kernel depends only on the two rates; build it once per pair.
    return torchaudio.transforms.Resample(from_rate, to_rate)
