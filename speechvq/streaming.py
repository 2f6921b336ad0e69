"""Feature frames made from the audio as a stage needs them, in dataset order: the shared decode-and-extract
loop (the features stage stores what it yields; with features.store=sample|none the quantize and evaluate stages
consume it directly), and the plan of resumable parts the quantize stage walks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import DataConfig, FeatureConfig
from .data import batches_by_length, iter_batches
from .features.base import FeatureExtractor, as_stored
from .records import FeatureMatrix, SkippedFile, Utterance


def extracted_batches(
    batches: list[list[Utterance]],
    data: DataConfig,
    features: FeatureConfig,
    extractor: FeatureExtractor,
    device: torch.device,
    skipped: list[SkippedFile],
    on_error: str | None = None,
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """(utt_ids, frames of each) per batch, in order, the frames as extracted (float32, on `device` or the CPU).
    Files that fail to decode are raised or appended to `skipped` (on_error, default data.on_error)."""
    # With two or more decoding workers, a front end without weights runs in them, on the CPU, side by side. A
    # forked worker must keep the one torch thread the DataLoader gives it (OpenMP is not fork-safe once the
    # parent has used it), so with a single worker the main process computes the features with all its threads.
    in_workers = device.type == "cpu" and not extractor.needs_weights and data.num_workers >= 2
    loaded = iter_batches(
        batches,
        features.sample_rate,
        data.num_workers,
        on_error or data.on_error,
        skipped,
        extract=extractor.extract_batch if in_workers else None,
    )
    for utt_ids, items in loaded:
        yield utt_ids, items if in_workers else extractor.extract_batch([samples.to(device) for samples in items])


def batch_samples(data: DataConfig, features: FeatureConfig) -> float:
    """The audio (in samples at the features' rate) of one extraction batch."""
    return data.batch_seconds * features.sample_rate


def iter_utterance_frames(
    utterances: list[Utterance], data: DataConfig, features: FeatureConfig, extractor, device
) -> Iterator[FeatureMatrix]:
    """Each utterance's frames as the store would give them back (rounded to features.store_dtype), in order;
    a file that fails to decode is an error here (its run decoded it once already)."""
    batches = batches_by_length(utterances, batch_samples(data, features))
    with torch.inference_mode():
        for utt_ids, frames in extracted_batches(batches, data, features, extractor, device, [], on_error="raise"):
            for utt_id, utt_frames in zip(utt_ids, frames, strict=True):
                yield FeatureMatrix(utt_id, _as_stored(utt_frames, features), extractor.frame_rate_hz)


def _as_stored(frames: torch.Tensor, features: FeatureConfig) -> torch.Tensor:
    """What the store would give back: float32 on the CPU, rounded to features.store_dtype. (Views of their batch,
    not copies: a copy per utterance cost 30 % of the streaming quantize stage, measured, and saved no memory.)"""
    return as_stored(frames.to("cpu", torch.float32), features.store_dtype)


@dataclass(frozen=True)
class AudioPart:
    """A run of consecutive utterances whose frames the quantize stage assigns and commits together."""

    number: int
    frames: torch.Tensor  # the decoded ones' frames concatenated (num_frames, dim), float32, rounded as stored
    processed: list[tuple[Utterance, int]]  # (utterance, num_frames) of those decoded, in order
    skipped: list[SkippedFile]  # those that failed to decode (data.on_error=skip)


def plan_parts(utterances: list[Utterance], frame_rate_hz: float, dim: int, part_bytes: int) -> list[list[Utterance]]:
    """Consecutive utterances grouped until their frames (estimated from the header durations) fill part_bytes
    of float32: the same grouping on every attempt, so a rerun knows which parts are done."""
    part_frames = max(1, part_bytes // (4 * dim))
    parts, part, frames = [], [], 0
    for utt in utterances:
        part.append(utt)
        frames += (utt.num_samples or 0) / (utt.sample_rate or 1) * frame_rate_hz
        if frames >= part_frames:
            parts.append(part)
            part, frames = [], 0
    return parts + [part] if part else parts


def iter_audio_parts(
    parts: list[list[Utterance]],
    todo: list[int],
    data: DataConfig,
    features: FeatureConfig,
    extractor: FeatureExtractor,
    device: torch.device,
) -> Iterator[AudioPart]:
    """The parts numbered in `todo` (ascending), decoded and extracted in one pass of the decoding workers."""
    size = batch_samples(data, features)
    batches, owner = [], []
    for number in todo:
        part_batches = batches_by_length(parts[number], size)
        batches += part_batches
        owner += [number] * len(part_batches)
    skipped: list[SkippedFile] = []
    pending: list[tuple[str, torch.Tensor]] = []
    with torch.inference_mode():
        loaded = extracted_batches(batches, data, features, extractor, device, skipped)
        for index, (utt_ids, frames) in enumerate(loaded):
            pending += [(utt_id, _as_stored(f, features)) for utt_id, f in zip(utt_ids, frames, strict=True)]
            number = owner[index]
            if index + 1 == len(batches) or owner[index + 1] != number:
                yield _assembled(number, parts[number], pending, skipped, extractor.dim)
                pending, skipped[:] = [], []


def _assembled(number: int, utterances: list[Utterance], pending, skipped, dim: int) -> AudioPart:
    by_id = {utt.utt_id: utt for utt in utterances}
    frames = torch.cat([f for _, f in pending]) if pending else torch.empty(0, dim)
    processed = [(by_id[utt_id], f.shape[0]) for utt_id, f in pending]
    return AudioPart(number, frames, processed, list(skipped))
