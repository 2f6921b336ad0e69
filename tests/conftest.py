"""Synthetic audio made on the fly; nothing is downloaded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]


def speechlike(duration_s: float, sample_rate: int, seed: int) -> np.ndarray:
    """Harmonic 'vowels' with moving pitch and formant-ish noise bursts: varied enough for MFCC k-means."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    f0 = 110 + 60 * np.sin(2 * math.pi * rng.uniform(0.5, 2.0) * t)
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(2, 5) * t)
    noise = rng.standard_normal(t.size) * (envelope < 0.3)
    return (0.2 * voiced * envelope + 0.05 * noise).astype(np.float32)


def write_dataset(root: Path, rates=(16000, 8000, 22050, 16000, 44100, 16000), durations=None) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rate in enumerate(rates):
        duration = durations[index] if durations else 0.6 + 0.15 * index
        sub = root / ("a" if index % 2 else "b")
        sub.mkdir(exist_ok=True)
        ext = "flac" if index % 3 == 2 else "wav"
        path = sub / f"utt{index}.{ext}"
        soundfile.write(path, speechlike(duration, rate, index), rate)
        paths.append(path)
    return paths


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_dataset(root)
    return root


# Lines a test wants in the run's own output (e.g. the SLURM job ids it submitted): tests attach them with
# record_property("report_line", ...); the controlling process prints them at the end, also under pytest-xdist,
# whose workers' stdout is not shown.
_REPORT_LINES: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _REPORT_LINES.extend(value for key, value in report.user_properties if key == "report_line")


def pytest_terminal_summary(terminalreporter):
    for line in _REPORT_LINES:
        terminalreporter.write_line(line)
