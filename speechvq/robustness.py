"""Robustness of units to what should not change them: noise, speed, pitch and room reverberation.

For each augmentation, the unit edit distance (UED) of a file is the Levenshtein distance between the
run-length-deduplicated units of the clean audio and of the augmented copy, divided by the length of the longer of
the two; the score is the mean over files, in [0, 1]: 0 means the units did not move, 1 that nothing was kept.
(Dividing by the clean length instead lets insertions push it past 1: on audio with digital silence, as the demo's,
any added noise turns a silent stretch's one unit into many, and the figure then no longer falls with the SNR.)
Augmentations are made with torchaudio and seeded, so a rerun gives the same figures."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchaudio.functional as F
from rapidfuzz.distance import Levenshtein

from .probe import deduplicate

AUGMENTATIONS = ("noise_20db", "noise_10db", "speed_0.9", "speed_1.1", "pitch_+2", "pitch_-2", "reverb")
PITCH_RATIOS = {"pitch_+2": (9, 8), "pitch_-2": (8, 9)}  # frequency ratios of about +-2 semitones


def augment(samples: torch.Tensor, sample_rate: int, name: str, generator: torch.Generator) -> torch.Tensor:
    """(num_samples,) float32 -> the augmented copy: white noise at 20 or 10 dB SNR, speed x0.9 / x1.1 (duration
    and pitch change together), pitch shifted by +-2 semitones (duration kept), or a synthetic room (an
    exponentially decaying noise impulse response, RT60 0.4 s, with the direct path). Lengths are kept, except
    for speed changes."""
    if name.startswith("noise_"):
        noise = torch.randn(samples.shape, generator=generator)
        return F.add_noise(samples.view(1, -1), noise.view(1, -1), torch.tensor([float(name[6:-2])]))[0]
    if name.startswith("speed_"):
        return F.speed(samples.view(1, -1), sample_rate, float(name[6:]))[0][0]
    if name.startswith("pitch_"):
        return _pitch_shift(samples, PITCH_RATIOS[name])
    if name == "reverb":
        length = int(0.4 * sample_rate)
        decay = torch.exp(-6.9 * torch.arange(length) / length)  # -60 dB at the end
        response = torch.randn(length, generator=generator) * decay * 0.1
        response[0] = 1.0
        wet = F.fftconvolve(samples, response)[: samples.numel()]
        return wet * (samples.abs().max() / wet.abs().max().clamp_min(1e-8))
    raise ValueError(f"unknown augmentation {name!r}; choose from {AUGMENTATIONS}")


def _pitch_shift(samples: torch.Tensor, ratio: tuple[int, int]) -> torch.Tensor:
    """Pitch times up / down, duration kept: a phase-vocoder time stretch to up / down times the length, then a
    resampling by down / up. torchaudio's pitch_shift does the same with the exact 2 ** (n / 12), whose resampling
    ratio has no small integer form and takes seconds per file; 9 / 8 is 2.04 semitones."""
    up, down = ratio
    window = torch.hann_window(512)
    spec = torch.stft(samples, 512, 128, window=window, pad_mode="constant", return_complex=True)
    advance = torch.linspace(0, math.pi * 128, spec.shape[0])[:, None]
    stretched = F.phase_vocoder(spec, down / up, advance)
    longer = torch.istft(stretched, 512, 128, window=window, length=round(samples.numel() * up / down))
    return F.resample(longer, up, down)[: samples.numel()]


def unit_edit_distance(clean: list[int], other: list[int]) -> float:
    """Levenshtein distance of the deduplicated sequences over the length of the longer one (0 for two empty)."""
    return Levenshtein.normalized_distance(deduplicate(clean), deduplicate(other))


def unit_robustness(
    encode: Callable[[torch.Tensor, int], torch.Tensor],
    waveforms: list[torch.Tensor],
    sample_rate: int,
    seed: int = 0,
    augmentations: tuple[str, ...] = AUGMENTATIONS,
) -> dict[str, dict]:
    """encode: (num_samples,) audio at sample_rate -> units (first column used where there are several
    codebooks). Mean unit edit distance per augmentation, over the files."""
    generator = torch.Generator().manual_seed(seed)
    clean = [_first_stream(encode(wave, sample_rate)) for wave in waveforms]
    out = {}
    for name in augmentations:
        distances = [
            unit_edit_distance(units, _first_stream(encode(augment(wave, sample_rate, name, generator), sample_rate)))
            for wave, units in zip(waveforms, clean)
        ]
        mean = sum(distances) / len(distances) if distances else math.nan
        out[name] = {"unit_edit_distance": mean, "num_files": len(distances)}
    return out


def _first_stream(units: torch.Tensor) -> list[int]:
    return (units if units.ndim == 1 else units[:, 0]).tolist()
