"""Synthetic audio made on the fly; nothing is downloaded."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
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


def kill_when(command: list[str], ready, *, env: dict, timeout: float = 300) -> None:
    """Start command in its own process group and SIGKILL the whole group as soon as ready() holds. The process
    must still be running then, or the test would not have interrupted anything."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.005)
    assert process.poll() is None, f"{' '.join(command[-3:])} finished before it could be killed"
    # torchrun starts its workers in sessions of their own: kill every descendant, not only the process group,
    # as a node failure or a SLURM cancel would.
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kmeans_checkpoint_meta(path: Path) -> dict:
    """The JSON header of a k-means checkpoint file; {} while it is not written yet (or being replaced)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads(handle.metadata()["speechvq"])
    except Exception:
        return {}
