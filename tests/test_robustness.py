"""Unit robustness: the edit distance by hand, each augmentation does what it says, and units drift further as the
noise grows."""

from __future__ import annotations

import math

import pytest
import soundfile
import torch

from speechvq import load, pipeline
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.robustness import AUGMENTATIONS, augment, unit_edit_distance, unit_robustness

RATE = 16000


def test_unit_edit_distance_by_hand():
    # Deduplicated: [1, 2, 3] vs [1, 2, 4]: one substitution over 3.
    assert unit_edit_distance([1, 1, 2, 3], [1, 2, 2, 4]) == pytest.approx(1 / 3)
    # [5, 6] vs [5, 7, 6, 8]: two insertions over the longer length 4.
    assert unit_edit_distance([5, 5, 6], [5, 7, 6, 8]) == pytest.approx(2 / 4)
    assert unit_edit_distance([3, 3, 3], [3]) == 0.0


def _sine(freq: float, seconds: float = 1.0) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(int(seconds * RATE)) / RATE)


def _peak_hz(samples: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(samples * torch.hann_window(samples.numel())).abs()
    return float(spectrum.argmax()) * RATE / samples.numel()


def test_each_augmentation_does_what_it_says():
    generator = torch.Generator().manual_seed(0)
    tone = _sine(200.0)
    for snr in (20, 10):
        noisy = augment(tone, RATE, f"noise_{snr}db", generator)
        measured = 10 * math.log10(float(tone.square().sum() / (noisy - tone).square().sum()))
        assert measured == pytest.approx(snr, abs=0.01) and noisy.shape == tone.shape
    assert augment(tone, RATE, "speed_0.9", generator).numel() == pytest.approx(RATE / 0.9, abs=2)
    faster = augment(tone, RATE, "speed_1.1", generator)
    assert faster.numel() == pytest.approx(RATE / 1.1, abs=2) and _peak_hz(faster) == pytest.approx(220, abs=2)
    up, down = augment(tone, RATE, "pitch_+2", generator), augment(tone, RATE, "pitch_-2", generator)
    assert up.shape == down.shape == tone.shape
    assert _peak_hz(up[2000:-2000]) == pytest.approx(225, abs=3) and _peak_hz(down[2000:-2000]) == pytest.approx(
        200 * 8 / 9, abs=3
    )
    wet = augment(tone, RATE, "reverb", generator)
    assert wet.shape == tone.shape and float(wet.abs().max()) == pytest.approx(float(tone.abs().max()), rel=1e-4)
    assert not torch.allclose(wet, tone, atol=1e-2)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(tone, RATE, "telephone", generator)


def test_units_drift_further_as_the_noise_grows(dataset, tmp_path):
    config = RunConfig(data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
                       codebook=CodebookConfig(codebook_size=16, n_init=1, max_iter=20),
                       stages=["features", "train", "quantize"], device="cpu")  # fmt: skip
    pipeline.run(config, tmp_path / "run")
    encoder = load(tmp_path / "run")
    waves = [torch.from_numpy(soundfile.read(path, dtype="float32")[0]) for path in sorted(dataset.rglob("*.wav"))]
    levels = ("noise_40db", "noise_20db", "noise_10db", "noise_0db")
    scores = unit_robustness(lambda w, r: encoder.encode(w, r), waves, RATE, seed=0, augmentations=levels)
    drift = [scores[name]["unit_edit_distance"] for name in levels]
    assert drift == sorted(drift) and drift[0] < drift[-1] - 0.1, drift
    assert all(scores[name]["num_files"] == len(waves) for name in levels)
    assert unit_robustness(lambda w, r: encoder.encode(w, r), waves[:1], RATE, augmentations=()) == {}
    assert set(AUGMENTATIONS) >= {"noise_20db", "noise_10db", "reverb"}
