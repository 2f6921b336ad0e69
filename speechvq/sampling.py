"""Which utterances k-means trains on when only its sample is stored (features.store=sample)."""

from __future__ import annotations

import torch

from .audio import probe
from .errors import AudioDecodeError
from .records import Utterance


def training_sample(listing: list[Utterance], frame_rate_hz: float, max_frames: int, seed: int) -> set[str]:
    """The ids of the utterances drawn, in an order made with the run's seed, while their frames (estimated from
    the file headers' durations, never fewer than the extractor makes) fit in max_frames; at least one. Drawn from
    the whole listing before sharding, so every shard (and every rank) agrees on the one sample, and only the
    files drawn are probed, so the cost is the sample's, not the corpus's. A file whose header cannot be read is
    passed over here; the header check of its shard names it (or lists it, under data.on_error=skip)."""
    order = torch.randperm(len(listing), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen: set[str] = set()
    total = 0
    for index in order:
        seconds = _duration_s(listing[index])
        if seconds is None:
            continue
        frames = int(seconds * frame_rate_hz)
        if chosen and total + frames > max_frames:
            break
        chosen.add(listing[index].utt_id)
        total += frames
    return chosen


def _duration_s(utt: Utterance) -> float | None:
    try:
        info = probe(utt.path, utt.member)
    except AudioDecodeError:
        return None
    return info.frames / info.samplerate
