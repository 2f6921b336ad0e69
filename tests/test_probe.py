"""The cross-speaker word probe: leave-one-speaker-out 1-NN on deduplicated unit sequences."""

from __future__ import annotations

import pytest

from speechvq.errors import ConfigError
from speechvq.probe import deduplicate, word_pattern, word_probe

FSDD = word_pattern(r"(?:^|/)(?P<label>\d)_(?P<speaker>[a-z]+)_\d+$")


def test_deduplicate_collapses_runs_only():
    assert deduplicate([3, 3, 1, 1, 1, 3, 2, 2]) == [3, 1, 3, 2]
    assert deduplicate([]) == []


def test_each_word_found_in_the_other_speakers_recordings():
    sequences = {
        "fsdd/1_ann_0": [1, 1, 2, 3],
        "fsdd/2_ann_0": [7, 8, 9],
        "fsdd/1_bob_0": [1, 2, 2, 3, 3],  # the same as ann's one once deduplicated
        "fsdd/2_bob_0": [7, 8, 8, 4],
        "notes/readme": [1, 2, 3],  # does not match: ignored
    }
    result = word_probe(sequences, FSDD)
    assert result["accuracy"] == 1.0
    assert (result["num_utterances"], result["num_speakers"], result["chance"]) == (4, 2, 0.5)
    assert result["mean_dedup_length"] == pytest.approx((3 + 3 + 3 + 3) / 4)


def test_the_same_speakers_recordings_are_never_neighbours():
    # ann's two takes of "1" are identical; were ann's own recordings allowed, 1_ann_0 would be right.
    # Across speakers, 1_ann_0 is nearest to bob's "2" (distance 1/3) rather than bob's "1" (distance 2/3).
    sequences = {
        "1_ann_0": [1, 2, 3],
        "1_ann_1": [1, 2, 3],
        "2_bob_0": [1, 2, 4],
        "1_bob_0": [1, 5, 6],
    }
    result = word_probe(sequences, FSDD)
    # 1_ann_0 -> 2_bob_0 wrong; 1_ann_1 -> 2_bob_0 wrong; 2_bob_0 -> ann's (both "1") wrong;
    # 1_bob_0 -> ann's "1" (distance 2/3 to both) right.
    assert result["accuracy"] == pytest.approx(1 / 4)


def test_edit_distance_is_normalized_by_the_longer_sequence():
    # 1_ann_0 vs 1_bob_0: 6 edits / 10 = 0.6; vs 2_bob_0: 4 edits / 4 = 1.0. Raw edit counts (6 vs 4), or
    # edits over the query's length (1.5 vs 1.0), would pick 2_bob_0.
    sequences = {"1_ann_0": [1, 2, 3, 4], "1_bob_0": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "2_bob_0": [9, 8]}
    result = word_probe(sequences, FSDD)
    # 1_ann_0 -> 1_bob_0 right; 1_bob_0 -> 1_ann_0 right; 2_bob_0 -> 1_ann_0 wrong.
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_ties_count_by_their_share_of_correct_labels():
    # 1_ann_0 is one edit from both of bob's recordings: half credit, in either file order.
    sequences = {"1_ann_0": [1, 2], "1_bob_0": [1, 3], "2_bob_0": [4, 2]}
    result = word_probe(sequences, FSDD)
    reordered = word_probe(dict(reversed(list(sequences.items()))), FSDD)
    # 1_ann_0: tie -> 0.5; 1_bob_0 -> 1_ann_0 right; 2_bob_0 -> 1_ann_0 wrong.
    assert result["accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert reordered["accuracy"] == result["accuracy"]


def test_one_speaker_gives_no_probe_and_bad_patterns_are_named():
    assert word_probe({"1_ann_0": [1], "2_ann_0": [2]}, FSDD) is None
    with pytest.raises(ConfigError, match="evaluate.word_probe.*named groups"):
        word_pattern(r"(\d)_([a-z]+)")
    with pytest.raises(ConfigError, match="evaluate.word_probe.*not a regular expression"):
        word_pattern(r"(?P<label>\d")
