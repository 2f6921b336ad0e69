"""Frozen values passed between stages. Shapes and units are in the comments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


def location(path: Path, member: str | None) -> str:
    """A file, or container:member, as messages, errors.tsv and a run's manifest name it."""
    return str(path) if member is None else f"{path}:{member}"


@dataclass(frozen=True)
class Utterance:
    """One entry of a dataset listing, before any decoding."""

    utt_id: str  # unique within the dataset; also the key of alignments and outputs
    path: Path  # absolute path of the audio file
    num_samples: int | None = None  # as claimed by a manifest (at the file's own rate), if any
    sample_rate: int | None = None  # the file's own rate, once its header was read
    segment: tuple[float, float] | None = None  # (start_s, duration_s) within the file; None: the whole file
    member: str | None = None  # the audio is this member of the container at `path` (containers.py); None: a file

    @property
    def location(self) -> str:
        return location(self.path, self.member)

    def manifest_name(self, root: Path) -> str:
        """How the run's <split>.tsv names it: the path relative to root, and the member after a colon."""
        return location(self.path.relative_to(root).as_posix(), self.member)


@dataclass(frozen=True)
class Waveform:
    utt_id: str
    samples: torch.Tensor  # (num_samples,) float32 mono, in [-1, 1]
    sample_rate: int  # Hz

    @property
    def duration_s(self) -> float:
        return self.samples.numel() / self.sample_rate


@dataclass(frozen=True)
class FeatureMatrix:
    utt_id: str
    frames: torch.Tensor  # (num_frames, dim) float32
    frame_rate_hz: float

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a run under data.on_error=skip, with the reason."""

    utt_id: str
    path: Path
    reason: str
