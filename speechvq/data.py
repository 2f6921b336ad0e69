"""Parallel decoding with memory bounded by the prefetch window, not by the dataset."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset

from .audio import load_waveform, probe, segment_frames
from .errors import AudioDecodeError
from .records import SkippedFile, Utterance, Waveform

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


class AudioDataset(Dataset):
    """Decodes one utterance per item. A bad file becomes a SkippedFile, so a worker never dies on it
    and the caller decides (per `on_error`) whether to stop or to list it."""

    def __init__(self, utterances: list[Utterance], sample_rate: int):
        self.utterances = utterances
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> Waveform | SkippedFile:
        return _decode(self.utterances[index], self.sample_rate)


def _decode(utt: Utterance, sample_rate: int) -> Waveform | SkippedFile:
    try:
        samples = load_waveform(utt.path, sample_rate, utt.segment, utt.member)
    except AudioDecodeError as exc:
        return SkippedFile(utt.utt_id, Path(utt.location), exc.reason)
    return Waveform(utt.utt_id, samples, sample_rate)


Extract = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class DecodedBatch:
    """Consecutive utterances decoded together: per decoded file its samples, or its feature frames where the
    extraction ran in the worker too. The items travel stacked in one tensor: one shared-memory handle per
    batch rather than one per file (passing a handle costs a socket round trip)."""

    utt_ids: list[str]
    stacked: torch.Tensor  # the items concatenated along dim 0
    lengths: list[int]
    skipped: list[SkippedFile]

    def items(self) -> list[torch.Tensor]:
        return list(self.stacked.split(self.lengths)) if self.lengths else []


class BatchDataset(Dataset):
    """Decodes one batch of utterances per item and, given `extract`, turns their samples into features in the
    same process: a cheap CPU front end then runs in the decoding workers, in parallel, and the features (a
    quarter of the audio's bytes for 39-d MFCC) are what crosses to the main process."""

    def __init__(self, batches: list[list[Utterance]], sample_rate: int, extract: Extract | None):
        self.batches = batches
        self.sample_rate = sample_rate
        self.extract = extract

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> DecodedBatch:
        decoded = [_decode(utt, self.sample_rate) for utt in self.batches[index]]
        good = [d for d in decoded if isinstance(d, Waveform)]
        items = [w.samples for w in good]
        if self.extract is not None and items:
            with torch.inference_mode():
                items = self.extract(items)
        stacked = torch.cat(items) if items else torch.empty(0)
        skipped = [d for d in decoded if isinstance(d, SkippedFile)]
        return DecodedBatch([w.utt_id for w in good], stacked, [item.shape[0] for item in items], skipped)


def batches_by_length(utterances: list[Utterance], max_samples: float, max_items: int = 512) -> list[list[Utterance]]:
    """Consecutive utterances grouped until their header lengths (num_samples, at each file's own rate) reach
    max_samples. The lengths only bound a batch's memory, so files at other rates than the target are fine."""
    batches, batch, total = [], [], 0
    for utt in utterances:
        batch.append(utt)
        total += utt.num_samples or 0
        if total >= max_samples or len(batch) >= max_items:
            batches.append(batch)
            batch, total = [], 0
    return batches + [batch] if batch else batches


def check_files(utterances: list[Utterance], on_error: OnError) -> tuple[list[Utterance], list[SkippedFile]]:
    """Header-only validation of every file before any decoding (missing, empty, not audio, a segment past the
    end of its file, or a sample count that disagrees with the manifest). Returns the good utterances with
    num_samples filled in from the file header (a segment's own), and the skipped ones."""
    good, skipped = [], []
    for utt in utterances:
        try:
            info = probe(utt.path, utt.member)
            frames = segment_frames(utt.path, utt.segment, info)[1] if utt.segment else info.frames
            if utt.num_samples is not None and utt.num_samples != frames:
                raise AudioDecodeError(utt.location, f"manifest says {utt.num_samples} samples, file has {frames}")
        except AudioDecodeError as exc:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(utt.utt_id, Path(utt.location), exc.reason))
            continue
        good.append(dataclasses.replace(utt, num_samples=frames, sample_rate=info.samplerate))
    return good, skipped


def iter_waveforms(
    utterances: list[Utterance],
    sample_rate: int,
    num_workers: int,
    on_error: OnError,
    skipped: list[SkippedFile],
) -> Iterator[Waveform]:
    """Yield decoded waveforms in listing order. Files that fail are raised as AudioDecodeError,
    or appended to `skipped` when on_error == 'skip'."""
    for item in _loader(AudioDataset(utterances, sample_rate), num_workers, prefetch=4):
        if isinstance(item, SkippedFile):
            _skip(item, on_error, skipped)
            continue
        yield item


def iter_batches(
    batches: list[list[Utterance]],
    sample_rate: int,
    num_workers: int,
    on_error: OnError,
    skipped: list[SkippedFile],
    extract: Extract | None = None,
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """Yield (utt_ids, items) per batch, in listing order: items are the decoded samples, or extract(samples)
    computed in the decoding worker. Failed files are raised or listed in `skipped`, as by iter_waveforms."""
    for batch in _loader(BatchDataset(batches, sample_rate, extract), num_workers, prefetch=2):
        for item in batch.skipped:
            _skip(item, on_error, skipped)
        yield batch.utt_ids, batch.items()


def _skip(item: SkippedFile, on_error: OnError, skipped: list[SkippedFile]) -> None:
    if on_error == "raise":
        raise AudioDecodeError(item.path, item.reason)
    log.warning("skipping %s: %s", item.path, item.reason)
    skipped.append(item)


def _loader(dataset: Dataset, num_workers: int, prefetch: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep,
        prefetch_factor=prefetch if num_workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context=_worker_context() if num_workers > 0 else None,
    )


def _worker_context():
    """The platform's own start method, named explicitly. Left implicit, the DataLoader inherits whatever the
    host process set as default: inside a joblib (loky) worker that is loky's, whose Process objects the
    DataLoader cannot start ('Process' object has no attribute 'env')."""
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])


def _keep(item):
    return item
