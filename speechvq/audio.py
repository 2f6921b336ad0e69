"""Decoding: any soundfile format -> mono float32 at the requested sample rate, validated."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from .containers import read_member
from .errors import AudioDecodeError
from .records import location

# Extensions soundfile (libsndfile) decodes, plus common aliases.
AUDIO_EXTENSIONS = frozenset(
    {f".{ext.lower()}" for ext in soundfile.available_formats()} | {".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif"}
)


def _source(path: Path, member: str | None):
    """What soundfile opens: the file, or the member's bytes read from its container."""
    if member is None:
        return str(path)
    return io.BytesIO(read_member(path, member))


def probe(path: Path, member: str | None = None) -> soundfile._SoundFileInfo:
    """Cheap header check (no decoding) so missing, empty and non-audio files fail early."""
    where = _check_exists(path, member)
    return _header(_source(path, member), where)


def _check_exists(path: Path, member: str | None) -> str | Path:
    """What errors call the audio; an AudioDecodeError when its file is missing or (a plain file) empty."""
    where = path if member is None else location(path, member)
    if not path.exists():
        raise AudioDecodeError(where, "file does not exist")
    if member is None and path.stat().st_size == 0:
        raise AudioDecodeError(where, "file is empty (0 bytes)")
    return where


def _header(source, where) -> soundfile._SoundFileInfo:
    try:
        info = soundfile.info(source)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(where, f"not a readable audio file ({exc})") from None
    if info.frames == 0:
        raise AudioDecodeError(where, "audio has zero samples")
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return info


def segment_frames(path, segment: tuple[float, float], info) -> tuple[int, int]:
    """(first sample, number of samples) of a (start_s, duration_s) segment at the file's rate; an
    AudioDecodeError when it does not lie within the file (info: its header)."""
    start_s, duration_s = segment
    start, frames = round(start_s * info.samplerate), round(duration_s * info.samplerate)
    if start + frames > info.frames:
        raise AudioDecodeError(
            path, f"segment {start_s:g} s + {duration_s:g} s ends past the end of the file ({info.duration:.3f} s)"
        )
    return start, frames


def load_waveform(
    path: Path, sample_rate: int, segment: tuple[float, float] | None = None, member: str | None = None
) -> torch.Tensor:
    """Decode `path` (or its `member`: containers.py; only `segment`, (start_s, duration_s), where given), average
    the channels and resample. Returns (num_samples,) float32."""
    where = _check_exists(path, member)
    source = _source(path, member)
    info = _header(source, where)
    start, frames = segment_frames(where, segment, info) if segment else (0, -1)
    try:
        with soundfile.SoundFile(source) as handle:
            handle.seek(start)
            data, file_rate = handle.read(frames, dtype="float32", always_2d=True), handle.samplerate
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(where, f"decoding failed ({exc})") from None
    if data.shape[0] == 0:
        raise AudioDecodeError(where, "audio has zero samples")
    if not np.isfinite(data).all():
        raise AudioDecodeError(where, "audio contains NaN or Inf samples")
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
