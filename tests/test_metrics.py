import math

import pytest
import torch

from speechvq.metrics import MetricsAccumulator, distortion, phone_unit_scores, unit_distribution


def test_pnmi_on_hand_built_joint_distribution():
    # 2 phones x 2 units, counts over 8 frames:
    #            u0  u1
    #   phone a   3   1
    #   phone b   0   4
    counts = torch.tensor([[3, 1], [0, 4]])
    p = [[3 / 8, 1 / 8], [0, 4 / 8]]
    p_phone, p_unit = [4 / 8, 4 / 8], [3 / 8, 5 / 8]
    mi = sum(p[i][j] * math.log(p[i][j] / (p_phone[i] * p_unit[j])) for i in range(2) for j in range(2) if p[i][j])
    h_phone = math.log(2)
    scores = phone_unit_scores(counts)
    assert scores["pnmi"] == pytest.approx(mi / h_phone, abs=1e-12)
    assert scores["pnmi"] == pytest.approx(0.5487949406953987, abs=1e-12)  # the same number, written out
    assert scores["phone_purity"] == pytest.approx(3 / 8 + 4 / 8)  # per unit, its most frequent phone
    assert scores["cluster_purity"] == pytest.approx(3 / 8 + 4 / 8)  # per phone, its most frequent unit
    assert scores["phone_entropy_bits"] == pytest.approx(1.0)


def test_phone_purity_and_cluster_purity_are_not_interchangeable():
    # 2 phones x 3 units:      u0 u1 u2
    #   phone a                 4  4  0
    #   phone b                 0  0  2
    # Labelling each unit with its most frequent phone is always right (phone purity 1); phone a is split over
    # two units, so its most frequent unit covers only half of it (cluster purity (4 + 2) / 10).
    scores = phone_unit_scores(torch.tensor([[4, 4, 0], [0, 0, 2]]))
    assert scores["phone_purity"] == pytest.approx(1.0)
    assert scores["cluster_purity"] == pytest.approx(0.6)
    # H(phone | unit) = 0, so all of the phone's information is in the unit.
    assert scores["pnmi"] == pytest.approx(1.0)


def test_pnmi_extremes():
    assert phone_unit_scores(torch.eye(4) * 10)["pnmi"] == pytest.approx(1.0)
    independent = torch.outer(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0, 4.0]))
    assert phone_unit_scores(independent)["pnmi"] == pytest.approx(0.0, abs=1e-12)


def test_unit_distribution():
    stats = unit_distribution(torch.tensor([2, 2, 0, 4]))
    assert stats["codes_used"] == 3 and stats["dead_codes"] == 1 and stats["usage"] == 0.75
    assert stats["entropy_bits"] == pytest.approx(1.5)  # p = 1/4, 1/4, 1/2
    assert stats["perplexity"] == pytest.approx(2**1.5)


def test_distortion_values():
    d = distortion(sum_sq_error=8.0, num_frames=4, dim=2, total_variance=10.0)
    assert d["mse"] == 1.0 and d["relative_mse"] == pytest.approx(0.2)
    assert d["sqnr_db"] == pytest.approx(10 * math.log10(5))


def test_accumulator_by_hand():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    acc = MetricsAccumulator(codebook_size=2, num_codebooks=1, frame_rate_hz=100.0)
    units = torch.tensor([[0], [0], [1], [1]])
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 12.0], [9.0, 10.0]])
    acc.add(frames, centroids[units[:, 0]], units)
    m = acc.result()
    assert m["num_frames"] == 4 and m["duration_s"] == pytest.approx(0.04)
    assert m["mse"] == pytest.approx((1 + 1 + 4 + 1) / 8)
    assert m["bitrate_bps"] == pytest.approx(100.0)  # log2(2) bits x 100 frames/s
    assert m["entropy_bitrate_bps"] == pytest.approx(100.0)
    assert m["dedup_units_per_s"] == pytest.approx(2 / 0.04)  # 0 0 1 1 -> 0 1
    assert m["dedup_bitrate_bps"] == pytest.approx(50.0)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 12.0], [9.0, 10.0]])
    variance = feats.var(0, unbiased=False).sum()
    assert m["relative_mse"] == pytest.approx(m["mse"] / float(variance / 2), rel=1e-6)


def test_accumulator_with_two_codebooks():
    acc = MetricsAccumulator(codebook_size=4, num_codebooks=2, frame_rate_hz=50.0)
    units = torch.tensor([[0, 1], [0, 1], [0, 2], [3, 2]])  # joint codes: A A B C -> 3 after dedup
    frames = torch.zeros(4, 2)
    acc.add(frames, frames, units)
    m = acc.result()
    assert m["bitrate_bps"] == pytest.approx(50.0 * 2 * 2)  # 2 codebooks x log2(4) bits x 50 frames/s
    assert m["usage"] == pytest.approx((2 / 4 + 2 / 4) / 2) and m["dead_codes"] == 4
    assert m["dedup_units_per_s"] == pytest.approx(3 / 0.08)
    assert m["entropy_bits"] == pytest.approx(unit_distribution(torch.tensor([3, 0, 0, 1]))["entropy_bits"] + 1.0)
