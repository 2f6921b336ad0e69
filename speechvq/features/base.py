from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

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
    takes_layer_lists: bool  # features.layer may be a list of layers


STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def as_stored(frames: torch.Tensor, store_dtype: str) -> torch.Tensor:
    """Frames (float32) rounded to the precision they are stored in (features.store_dtype), as float32: what the
    train, quantize and evaluate stages read back, and what the API assigns, so both make the same units."""
    if store_dtype == "float32":
        return frames
    return frames.to(STORE_DTYPES[store_dtype]).to(torch.float32)


def normalize_utterance(frames: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance CMVN: zero mean, unit variance per dimension over the utterance's frames."""
    if frames.shape[0] < 2:
        return frames - frames.mean(dim=0, keepdim=True) if frames.shape[0] else frames
    mean = frames.mean(dim=0, keepdim=True)
    std = frames.std(dim=0, unbiased=False, keepdim=True)
    return (frames - mean) / (std + eps)


def on_sphere(frames: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each frame scaled to length sqrt(dim) (the mean length of a CMVN frame), so that Euclidean k-means on them
    clusters by angle, as HuBERT's cosine prediction head scores its frames."""
    return F.normalize(frames, dim=-1, eps=eps) * frames.shape[-1] ** 0.5


PER_UTTERANCE = ("utterance", "utterance_l2")  # features.normalize values applied file by file, not undone later


def normalized_as_configured(frames: list[torch.Tensor], normalize: str) -> list[torch.Tensor]:
    """features.normalize per file: `utterance` (CMVN) or `utterance_l2` (CMVN, then on_sphere), after each whole
    file's frames are stitched (a chunk's own statistics would differ from the file's); "global" is the train
    stage's, on the codebook."""
    if normalize == "utterance":
        return [normalize_utterance(f) for f in frames]
    if normalize == "utterance_l2":
        return [on_sphere(normalize_utterance(f)) for f in frames]
    return frames


CONTEXT_S = 1.0  # context each side of a chunk of a long file
BATCH_CHUNKS = 4  # a padded batch holds at most this many chunks of audio

Forward = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def batched_or_chunked(
    waveforms: list[torch.Tensor],
    forward: Forward,
    num_frames: Callable[[int], int],
    hop: int,
    dim: int,
    sizes: tuple[int, int],
) -> list[torch.Tensor]:
    """Waveforms of any lengths through a model whose frames come every `hop` samples -> [(num_frames_i, dim)].
    forward(list of waveforms) runs one padded, masked pass. The waveforms up to `chunk` samples go in passes of
    similar lengths (padding stays small); each longer one in overlapping windows (chunked), so memory and
    attention cost are bounded however long a file is; too-short ones give (0, dim). sizes: chunk_sizes()."""
    chunk = sizes[0]
    out: list[torch.Tensor | None] = [None] * len(waveforms)
    short = [i for i, w in enumerate(waveforms) if 0 < num_frames(w.numel()) and w.numel() <= chunk]
    for group in _length_groups(sorted(short, key=lambda i: waveforms[i].numel()), waveforms, BATCH_CHUNKS * chunk):
        for i, frames in zip(group, forward([waveforms[i] for i in group])):
            out[i] = frames
    for i, wave in enumerate(waveforms):
        if out[i] is None:
            empty = num_frames(wave.numel()) == 0
            out[i] = wave.new_zeros((0, dim)) if empty else chunked(wave, forward, num_frames, hop, dim, sizes)
    return out


def chunked(
    samples: torch.Tensor,
    forward: Forward,
    num_frames: Callable[[int], int],
    hop: int,
    dim: int,
    sizes: tuple[int, int],
) -> torch.Tensor:
    """Windows of `chunk` samples with `context` more each side (sizes); frame i of a window starting at sample s
    (a multiple of the hop) is global frame s / hop + i, so the core frames stitch exactly onto the file's grid."""
    chunk, context = sizes
    total = num_frames(samples.numel())
    out = samples.new_empty((total, dim))
    for core_start in range(0, samples.numel(), chunk):
        start = max(0, core_start - context)
        frames = forward([samples[start : core_start + chunk + context]])[0]
        first, last = core_start // hop, min(total, (core_start + chunk) // hop)
        if first >= last:
            break
        out[first:last] = frames[first - start // hop : last - start // hop].to(out.device)
    return out


def chunk_sizes(config: FeatureConfig, hop: int) -> tuple[int, int]:
    """(features.chunk_s, CONTEXT_S) in samples, each a whole number of hops."""
    whole_hops = lambda seconds: round(seconds * config.sample_rate) // hop * hop  # noqa: E731
    return max(hop, whole_hops(config.chunk_s)), whole_hops(CONTEXT_S)


def _length_groups(order: list[int], waveforms: list[torch.Tensor], max_padded_samples: int) -> list[list[int]]:
    """Consecutive runs of the length-sorted indices whose padded size (count x longest) fits the budget."""
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * waveforms[i].numel() <= max_padded_samples:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
