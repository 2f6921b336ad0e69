"""A corpus of any size from the bundled real speech, for rehearsing a long job on one machine.

    python scripts/make_rehearsal_corpus.py HOURS OUT [--source data/librispeech] [--seed 0] [--workers 2]

The 52 minutes of LibriSpeech in data/librispeech (251 speakers) are perturbed once into a pool of 9 versions: speed
0.9 / 1.0 / 1.1 (resampling, as Kaldi's speed perturbation: tempo and pitch together) times pitch -2 / 0 / +2
semitones (phase vocoder and resampling: tempo kept). Each output file is 10-30 s of utterances drawn from the pool,
joined with 0.1-0.5 s pauses, at a gain of -6..+6 dB, with white noise at 15-40 dB SNR: every file distinct, all of
it real speech. 16 kHz mono 16-bit WAV, 1,000 files per folder. File i depends only on (seed, i), so the corpus is
the same whatever --workers, and a smaller corpus is a prefix of a larger one with the same seed. OUT/ATTRIBUTION.md
keeps the source's license.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
SPEEDS = ((9, 10), (1, 1), (11, 10))  # as ratios, so the resampling kernels stay small
PITCHES = ((8, 9), (1, 1), (9, 8))  # -2.04, 0, +2.04 semitones
FILES_PER_FOLDER = 1000

_POOL: list[np.ndarray] = []  # the perturbed utterances, shared with forked workers (copy on write)


def build_pool(source: Path) -> list[np.ndarray]:
    """Every source utterance in every (speed, pitch) version, float32 at 16 kHz."""
    originals = []
    for path in sorted(source.rglob("*.flac")) + sorted(source.rglob("*.wav")):
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        wave = torch.from_numpy(samples.mean(axis=1))
        originals.append(torchaudio.functional.resample(wave, rate, RATE) if rate != RATE else wave)
    pool = []
    for up, down in SPEEDS:
        # speed up/down: the samples played up/down times faster, i.e. resampled by down/up
        sped = [w if up == down else torchaudio.functional.resample(w, up, down) for w in originals]
        for pitch in PITCHES:
            pool += [(w if pitch == (1, 1) else pitch_shift(w, *pitch)).numpy() for w in sped]
    return pool


def pitch_shift(wave: torch.Tensor, up: int, down: int) -> torch.Tensor:
    """Pitch times up/down, duration kept: stretched by up/down with a phase vocoder, then resampled by down/up.
    (torchaudio's pitch_shift does the same with a ratio whose resampling kernel is thousands of taps long.)"""
    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[0])[:, None]
    stretched = torchaudio.functional.phase_vocoder(spec, down / up, advance)
    longer = torch.istft(stretched, n_fft, hop, window=window, length=round(wave.numel() * up / down))
    return torchaudio.functional.resample(longer, up, down)[: wave.numel()]


def make_file(args: tuple[int, int, Path]) -> float:
    """File `index` of the corpus; returns its duration in seconds."""
    seed, index, out = args
    rng = np.random.default_rng([seed, index])
    target = int(rng.uniform(10.0, 30.0) * RATE)
    pieces, length = [], 0
    while length < target:
        utterance = _POOL[rng.integers(len(_POOL))]
        pause = np.zeros(int(rng.uniform(0.1, 0.5) * RATE), dtype=np.float32)
        pieces += [utterance, pause]
        length += utterance.size + pause.size
    wave = np.concatenate(pieces)[:target]
    wave *= np.float32(10 ** (rng.uniform(-6.0, 6.0) / 20))
    signal_power = float(np.mean(wave**2)) + 1e-12
    noise_power = signal_power / 10 ** (rng.uniform(15.0, 40.0) / 10)
    wave += rng.standard_normal(wave.size, dtype=np.float32) * np.float32(math.sqrt(noise_power))
    peak = float(np.abs(wave).max())
    if peak > 0.99:  # keep clear of 16-bit clipping
        wave *= np.float32(0.99 / peak)
    path = out / f"{index // FILES_PER_FOLDER:04d}" / f"r{index:07d}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, RATE, subtype="PCM_16")
    return target / RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hours", type=float)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=REPO / "data" / "librispeech")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    _POOL.extend(build_pool(args.source))
    pool_s = sum(w.size for w in _POOL) / RATE
    print(f"pool: {len(_POOL)} utterances, {pool_s / 3600:.2f} h, in {time.perf_counter() - start:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    # In order until the files reach the target duration (files are at least 10 s: a bound on how many).
    wanted, total, count = args.hours * 3600, 0.0, 0
    jobs = [(args.seed, i, args.out) for i in range(int(wanted / 10) + 1)]
    with multiprocessing.get_context("fork").Pool(args.workers) as workers:
        for seconds in workers.imap(make_file, jobs, chunksize=16):
            total += seconds
            count += 1
            if total >= wanted:
                break
        workers.terminate()
    # a worker may have written files past the last one counted: remove them, so the corpus is exactly its prefix
    for path in args.out.rglob("r*.wav"):
        if int(path.stem[1:]) >= count:
            path.unlink()
    (args.out / "ATTRIBUTION.md").write_text(
        f"# Rehearsal corpus: {count} files, {total / 3600:.2f} h (seed {args.seed})\n\n"
        "Made by speechvq's scripts/make_rehearsal_corpus.py from LibriSpeech train-clean-100 utterances (as bundled\n"
        "in speechvq's data/librispeech): speed, pitch, gain and noise perturbations and concatenations.\n"
        "Source license: Creative Commons Attribution 4.0 International (CC BY 4.0), LibriSpeech (c) 2014 Vassil\n"
        "Panayotov (openslr.org/12). Anything that redistributes these files must keep this attribution.\n"
    )
    print(f"{count} files, {total / 3600:.3f} h in {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
