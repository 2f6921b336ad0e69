"""Matching what users key by utterance (phone alignments, speakers) to the dataset's utterance ids.

A dataset's ids are paths relative to its root without the suffix (`wav/1688-142285-0000`), while alignments and
speaker lists are often keyed by the file stem alone (the LibriSpeech / Montreal Forced Aligner convention,
`1688-142285-0000`). Ids match first; only when no id matches at all are keys matched to the ids whose file stem
they equal, where that stem names one utterance on each side (a stem shared by two files would be a guess)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Value = TypeVar("Value")
SHOWN = 3  # ids of each side quoted in a mismatch message


def file_stem(utt_id: str) -> str:
    return utt_id.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class IdMatch(Generic[Value]):
    by_id: dict[str, Value]  # dataset id -> value, for the dataset's utterances that have one
    matched_on: str  # "id", "file stem", or "nothing"
    their_ids: tuple[str, ...]  # a few keys of the source, for messages
    our_ids: tuple[str, ...]  # a few dataset ids

    def mismatch(self) -> str:
        """What to tell the user when nothing matched."""
        return (
            f"no utterance id matches the dataset's ids, nor any file stem: the file has "
            f"{', '.join(map(repr, self.their_ids)) or 'no ids'}, ...; the dataset has "
            f"{', '.join(map(repr, self.our_ids)) or 'no utterances'}, ..."
        )


def match_ids(keyed: dict[str, Value], dataset_ids: Iterable[str], what: str) -> IdMatch[Value]:
    """keyed (a source's id -> value) re-keyed by the dataset's ids. what: the source, for the log line."""
    ids = list(dataset_ids)
    samples = tuple(sorted(keyed)[:SHOWN]), tuple(ids[:SHOWN])
    exact = {utt_id: keyed[utt_id] for utt_id in ids if utt_id in keyed}
    if exact or not keyed:
        return IdMatch(exact, "id" if exact else "nothing", *samples)
    ours, theirs = Counter(map(file_stem, ids)), Counter(map(file_stem, keyed))
    unique = {file_stem(key): key for key in keyed if theirs[file_stem(key)] == 1}
    by_stem = {
        utt_id: keyed[unique[file_stem(utt_id)]]
        for utt_id in ids
        if ours[file_stem(utt_id)] == 1 and file_stem(utt_id) in unique
    }
    if not by_stem:
        return IdMatch({}, "nothing", *samples)
    example = next(iter(by_stem))
    log.info(
        "%s: no utterance id matches, so %d of %d utterances are matched by file stem (%r -> %r)",
        *(what, len(by_stem), len(ids), unique[file_stem(example)], example),
    )
    return IdMatch(by_stem, "file stem", *samples)


def require_match(keyed: dict[str, Value], dataset_ids: Iterable[str], path) -> dict[str, Value]:
    """match_ids' result, or an AlignmentError naming the file at `path` and a few ids of each side."""
    from .errors import AlignmentError

    matched = match_ids(keyed, dataset_ids, str(path))
    if not matched.by_id:
        raise AlignmentError(path, matched.mismatch())
    return matched.by_id
