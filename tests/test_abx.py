"""ABX: DTW and frame distances by hand, error rates on hand-built items whose answer is known, the averaging
order, items from alignments, the evaluate stage, and parity with the reference package (zerospeech-libriabx2)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from speechvq import pipeline
from speechvq.abx import AbxItem, abx_error_rates, dtw, frame_distances, item_span, items_from_labels, write_items
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.featstore import FeatureStore

RATE = 100.0


def _costs(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(0)


def test_dtw_cost_over_path_length_by_hand():
    # Best path (0,0) -> (1,1) -> (1,2): cost 0 + 0 + 1 over 3 cells.
    assert dtw(_costs([[0, 1, 2], [1, 0, 1]]), torch.tensor([2]), torch.tensor([3])).item() == pytest.approx(1 / 3)
    # All ties: the diagonal first, then along the edge, 3 cells: 6 / 3.
    assert dtw(_costs([[2, 2, 2], [2, 2, 2]]), torch.tensor([2]), torch.tensor([3])).item() == pytest.approx(6 / 3)
    # Only the first len_x x len_y cells count (padding ignored), batched.
    padded = torch.stack([_costs([[0, 1, 2], [1, 0, 1]])[0], _costs([[5, 9, 9], [9, 9, 9]])[0]])
    assert dtw(padded, torch.tensor([2, 1]), torch.tensor([3, 1])).tolist() == pytest.approx([1 / 3, 5.0])


def test_frame_distances_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    y = torch.tensor([[[0.0, 2.0], [-3.0, 0.0], [5.0, 0.0], [0.0, 0.0]]])
    angular = frame_distances(x, y, "angular")[0]
    torch.testing.assert_close(angular, torch.tensor([[0.5, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]))
    assert frame_distances(x, y, "euclidean")[0, 0].tolist() == pytest.approx([math.sqrt(5), 4.0, 4.0, 1.0])
    p, q = torch.tensor([[[0.5, 0.5]]]), torch.tensor([[[0.9, 0.1]]])
    kl = 0.5 * math.log((0.5 + 1e-6) / (0.9 + 1e-6)) + 0.5 * math.log((0.5 + 1e-6) / (0.1 + 1e-6))
    back = 0.9 * math.log((0.9 + 1e-6) / (0.5 + 1e-6)) + 0.1 * math.log((0.1 + 1e-6) / (0.5 + 1e-6))
    assert frame_distances(p, q, "kl").item() == pytest.approx(kl, rel=1e-5)
    assert frame_distances(p, q, "kl_symmetric").item() == pytest.approx((kl + back) / 2, rel=1e-5)


def _case(tokens: list[tuple[str, str, str, list[float]]]):
    """(context, speaker, phone, one frame) per item -> features and items, one file per item."""
    features, items = {}, []
    for number, (context, speaker, phone, vector) in enumerate(tokens):
        file = f"f{number}"
        features[file] = torch.tensor([vector])
        prev, nxt = context.split("+")
        items.append(AbxItem(file, 0.0, 0.02, phone, prev, nxt, speaker))  # one frame at 100 Hz
    return features, items


def _scores(tokens, **options):
    features, items = _case(tokens)
    return abx_error_rates(features, RATE, items, **options)


def test_within_speaker_separable_tied_and_by_hand():
    separable = [("x+y", "s", "a", [1, 0]), ("x+y", "s", "a", [1, 0.1]), ("x+y", "s", "b", [0, 1]),
                 ("x+y", "s", "b", [0.1, 1])]  # fmt: skip
    assert _scores(separable).within == 0.0
    tied = [(c, s, p, [1.0, 1.0]) for c, s, p, _ in separable]
    assert _scores(tied).within == 0.5  # every comparison a tie: one half each
    # a = {(1,0), (0,1)}, b = {(1,1), (1,1)}: for (a, b) each x in a is closer to both b's (0.25) than to the other
    # a (0.5): error 1; for (b, a) the other b is at 0: error 0. Mean over the two pairs: 0.5.
    by_hand = [("x+y", "s", "a", [1, 0]), ("x+y", "s", "a", [0, 1]), ("x+y", "s", "b", [1, 1]),
               ("x+y", "s", "b", [1, 1])]  # fmt: skip
    scores = _scores(by_hand)
    assert scores.within == pytest.approx(0.5) and scores.num_items == 4 and scores.across is None


def test_contexts_are_averaged_before_speakers_and_pairs():
    """Context c1 has many separable tokens (error 0), c2 the hand-built case (error 1 for (a, b), 0 for (b, a)).
    Per-context means first: (a, b) = (0 + 1) / 2, (b, a) = 0, overall 0.25. Pooling all triples would weigh c1's
    many triples more and give a lower number."""
    c1 = [("p+q", "s", "a", [1, 0.05 * k]) for k in range(4)] + [("p+q", "s", "b", [0.05 * k, 1]) for k in range(4)]
    c2 = [("x+y", "s", "a", [1, 0]), ("x+y", "s", "a", [0, 1]), ("x+y", "s", "b", [1, 1]), ("x+y", "s", "b", [1, 1])]
    assert _scores(c1 + c2).within == pytest.approx(0.25)


def test_across_speakers_takes_x_from_the_other_speaker():
    same = [("x+y", "s1", "a", [1, 0]), ("x+y", "s1", "b", [0, 1]), ("x+y", "s2", "a", [1, 0.2]),
            ("x+y", "s2", "b", [0.2, 1])]  # fmt: skip
    scores = _scores(same)
    assert scores.across == 0.0 and scores.within is None  # one token per phone and speaker: no within triple
    # s2 says a the way s1 says b: every across triple is wrong.
    swapped = same[:2] + [("x+y", "s2", "a", [0, 1]), ("x+y", "s2", "b", [1, 0])]
    assert _scores(swapped).across == 1.0


def test_items_from_alignment_labels_and_the_frame_convention():
    labels = {"u1": "sil sil a a b b b sil c".split(), "u2": "a b".split(), "u3": "sil a sil".split()}
    items = items_from_labels(labels, RATE, {"u1": "s1", "u2": "s1"})
    assert items == [AbxItem("u1", 0.02, 0.04, "a", "sil", "b", "s1"), AbxItem("u1", 0.04, 0.07, "b", "a", "sil", "s1")]
    # libri-light: frames ceil(rate * onset - 0.5) .. floor(rate * offset - 0.5), exclusive.
    assert item_span(0.04, 0.07, RATE, 100) == (4, 6) and item_span(0.04, 0.07, RATE, 5) == (4, 5)


def _random_case(seed: int):
    """Speakers x contexts x phones with 1-4 tokens of 2-6 frames each: small enough that nothing is subsampled."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    features, items, number = {}, [], 0
    for speaker in ("s1", "s2", "s3"):
        for context in ("x+y", "y+z"):
            for phone, centre in (("a", 0.0), ("b", 0.6), ("c", 1.2)):
                for _ in range(rng.randint(1, 4)):
                    frames = rng.randint(2, 6)
                    file = f"f{number:03d}"
                    features[file] = centre + torch.randn(frames + 2, 4, generator=generator)
                    prev, nxt = context.split("+")
                    items.append(AbxItem(file, 0.01, (frames + 1.5) / RATE, phone, prev, nxt, speaker))
                    number += 1
    return features, items


def test_parity_with_zerospeech_libriabx2(tmp_path):
    """The reference package on the same features and item file, nothing subsampled: the same error rates. The
    reference scales every frame to unit length before any distance; for the Euclidean case speechvq, which
    measures frames as they are, is given the unit-length frames."""
    pytest.importorskip("zrc_abx2", reason="the [eval] extra installs zerospeech-libriabx2")
    from zrc_abx2.eval_ABX import EvalABX, EvalArgs

    features, items = _random_case(0)
    for file, frames in features.items():
        np.save(tmp_path / f"{file}.npy", frames.numpy())
    write_items(tmp_path / "case.item", items)
    for distance, theirs in (("angular", "cosine"), ("euclidean", "euclidean")):
        args = EvalArgs(path_data=str(tmp_path), path_item_file=str(tmp_path / "case.item"), feature_size=1 / RATE,
                        speaker_mode="all", context_mode="within", distance_mode=theirs, max_size_group=100,
                        max_x_across=100)  # fmt: skip
        reference = {r["abx-s-condition"]: r["score"] for r in EvalABX().eval_abx(args)}
        unit_length = {f: x / x.norm(dim=1, keepdim=True) for f, x in features.items()}
        mine = unit_length if distance == "euclidean" else features
        ours = abx_error_rates(mine, RATE, items, distance, max_size_group=100, max_x_across=100)
        assert ours.within == pytest.approx(reference["within"], abs=1e-6), distance
        assert ours.across == pytest.approx(reference["across"], abs=1e-6), distance
        assert 0.0 < ours.within < 0.5 and 0.0 < ours.across < 0.5


def test_subsampling_is_seeded():
    features, items = _random_case(1)
    first = abx_error_rates(features, RATE, items, max_size_group=2, max_x_across=1, seed=7)
    assert first == abx_error_rates(features, RATE, items, max_size_group=2, max_x_across=1, seed=7)
    assert first != abx_error_rates(features, RATE, items, max_size_group=2, max_x_across=1, seed=8)


def test_evaluate_stage_writes_abx_for_features_and_units(dataset, tmp_path):
    run_dir = tmp_path / "run"
    config = RunConfig(data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
                       codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=10),
                       stages=["features", "train", "quantize"], device="cpu")  # fmt: skip
    pipeline.run(config, run_dir)
    records = [json.loads(x) for x in (run_dir / "units.jsonl").read_text().splitlines()]
    labels = {r["id"]: [f"p{(t // 7) % 4}" for t in range(r["num_frames"])] for r in records}
    (tmp_path / "align.tsv").write_text("".join(f"{k}\t{' '.join(v)}\n" for k, v in labels.items()))
    speakers = {r["id"]: r["id"].split("/")[0] for r in records}
    (tmp_path / "speakers.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in speakers.items()))
    config.data.alignments, config.data.speakers = str(tmp_path / "align.tsv"), str(tmp_path / "speakers.tsv")
    config.stages = ["evaluate"]
    abx = pipeline.run(config, run_dir).metrics["abx"]
    assert set(abx) == {"features", "units"}
    store = FeatureStore(run_dir / "features")
    features = {matrix.utt_id: matrix.frames for matrix in store.iter_utterances()}
    direct = abx_error_rates(features, store.frame_rate_hz, items_from_labels(labels, 100.0, speakers))
    assert abx["features"]["within_speaker_error"] == pytest.approx(direct.within)
    assert abx["features"]["across_speaker_error"] == pytest.approx(direct.across)
    units = {r["id"]: torch.nn.functional.one_hot(torch.tensor(r["units"]), 8).float() for r in records}
    on_units = abx_error_rates(units, store.frame_rate_hz, items_from_labels(labels, 100.0, speakers))
    assert abx["units"]["within_speaker_error"] == pytest.approx(on_units.within)
