"""Parallel decoding with memory bounded by the prefetch window, not by the dataset."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections.abc import Iterator
from typing import Literal

from torch.utils.data import DataLoader, Dataset

from .audio import load_waveform, probe
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
        utt = self.utterances[index]
        try:
            samples = load_waveform(utt.path, self.sample_rate)
        except AudioDecodeError as exc:
            return SkippedFile(utt.utt_id, utt.path, exc.reason)
        return Waveform(utt.utt_id, samples, self.sample_rate)


def check_files(utterances: list[Utterance], on_error: OnError) -> tuple[list[Utterance], list[SkippedFile]]:
    """Header-only validation of every file before any decoding (missing, empty, not audio, or a
    sample count that disagrees with the manifest). Returns the good utterances with num_samples
    filled in from the file header, and the skipped ones."""
    good, skipped = [], []
    for utt in utterances:
        try:
            info = probe(utt.path)
            if utt.num_samples is not None and utt.num_samples != info.frames:
                raise AudioDecodeError(utt.path, f"manifest says {utt.num_samples} samples, file has {info.frames}")
        except AudioDecodeError as exc:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(utt.utt_id, utt.path, exc.reason))
            continue
        good.append(dataclasses.replace(utt, num_samples=info.frames))
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
    loader = DataLoader(
        AudioDataset(utterances, sample_rate),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context=_worker_context() if num_workers > 0 else None,
    )
    for item in loader:
        if isinstance(item, SkippedFile):
            if on_error == "raise":
                raise AudioDecodeError(item.path, item.reason)
            log.warning("skipping %s: %s", item.path, item.reason)
            skipped.append(item)
            continue
        yield item


def _worker_context():
    """The platform's own start method, named explicitly. Left implicit, the DataLoader inherits whatever the
    host process set as default: inside a joblib (loky) worker that is loky's, whose Process objects the
    DataLoader cannot start ('Process' object has no attribute 'env')."""
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])


def _keep(item: Waveform | SkippedFile) -> Waveform | SkippedFile:
    return item
