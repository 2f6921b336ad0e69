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


def segment_frames(path: Path, segment: tuple[float, float], info) -> tuple[int, int]:
    """(first sample, number of samples) of a (start_s, duration_s) segment at the file's rate; an
    AudioDecodeError when it does not lie within the file (info: its header)."""
    start_s, duration_s = segment
    start, frames = round(start_s * info.samplerate), round(duration_s * info.samplerate)
    if start + frames > info.frames:
        raise AudioDecodeError(
            path, f"segment {start_s:g} s + {duration_s:g} s ends past the end of the file ({info.duration:.3f} s)"
        )
    return start, frames


def load_waveform(path: Path, sample_rate: int, segment: tuple[float, float] | None = None) -> torch.Tensor:
    """Decode `path` (only `segment`, (start_s, duration_s), where given), average the channels and resample.
    Returns (num_samples,) float32."""
    info = probe(path)
    start, frames = segment_frames(path, segment, info) if segment else (0, -1)
    try:
        with soundfile.SoundFile(str(path)) as handle:
            handle.seek(start)
            data, file_rate = handle.read(frames, dtype="float32", always_2d=True), handle.samplerate
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
