"""The spoken-word probe: can the unit sequences tell words apart across speakers? Leave-one-speaker-out
1-nearest-neighbour accuracy on deduplicated unit sequences, with the length-normalized edit distance
(Levenshtein distance / the longer length). Speaker and word come from each utterance id through a regular
expression with the named groups `speaker` and `label` (FSDD: `7_george_3` is the word seven by george)."""

from __future__ import annotations

import re

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from .errors import ConfigError


def deduplicate(units: list[int]) -> list[int]:
    """Runs of one unit become one unit (the unit-LM convention)."""
    return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]


def word_pattern(pattern: str) -> re.Pattern:
    """The compiled evaluate.word_probe, or a ConfigError that says what is wrong with it."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError("evaluate.word_probe", pattern, f"not a regular expression ({error})") from None
    if not {"speaker", "label"} <= set(regex.groupindex):
        raise ConfigError("evaluate.word_probe", pattern, "needs the named groups (?P<speaker>...) and (?P<label>...)")
    return regex


def word_probe(sequences: dict[str, list[int]], regex: re.Pattern) -> dict | None:
    """Accuracy over the utterances whose id matches `regex`; None when fewer than two speakers match.
    Ties for nearest neighbour count by their share of correct labels (the expected accuracy of a random
    tie-break), so the figure does not depend on file order."""
    matched = [(m, seq) for utt_id, seq in sequences.items() if (m := regex.search(utt_id))]
    speakers = np.array([m["speaker"] for m, _ in matched])
    labels = np.array([m["label"] for m, _ in matched])
    if len(set(speakers.tolist())) < 2:
        return None
    queries = [deduplicate(seq) for _, seq in matched]
    distances = process.cdist(queries, queries, scorer=Levenshtein.normalized_distance, dtype=np.float64)
    distances[speakers[:, None] == speakers[None, :]] = np.inf  # neighbours come from other speakers only
    nearest = distances == distances.min(axis=1, keepdims=True)
    credit = (nearest & (labels[:, None] == labels[None, :])).sum(axis=1) / nearest.sum(axis=1)
    return {
        "accuracy": float(credit.mean()),
        "chance": 1.0 / len(set(labels.tolist())),
        "num_utterances": len(matched),
        "num_speakers": len(set(speakers.tolist())),
        "mean_dedup_length": float(np.mean([len(q) for q in queries])),
    }
