"""Synthesize extra espeak-ng speech to train encoders on (data/espeak_train): the demo's espeak-ng sentences are
5 of the 60 training minutes, too few for an encoder to learn the synthetic voices. The text is random words from
the Debian word list (not the demo's sentence template, so nothing here repeats the evaluation sentences' words
by design), spoken by more voice variants than the demo uses, with varied rate and pitch. No alignments: these
files are for self-supervised training only.

Needs the Debian packages espeak-ng and wamerican (/usr/share/dict/words) only when regenerating.
Usage: python scripts/make_espeak_train.py [--out data/espeak_train] [--sentences 300] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import soundfile
import torch
import torchaudio
from make_demo_data import TARGET_RATE, VOICES, Espeak

EXTRA_VOICES = ["en+m1", "en+f1", "en-us+m4", "en-us+f4", "en-gb-x-rp+m5", "en+f5", "en-us+m7", "en+klatt"]


def read_words(path: Path) -> list[str]:
    """Plain lowercase words of 3 to 9 letters (no names, no possessives)."""
    words = path.read_text(encoding="utf-8", errors="replace").split()
    return sorted({w for w in words if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 9})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/espeak_train"))
    parser.add_argument("--words", type=Path, default=Path("/usr/share/dict/words"))
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    words, rng = read_words(args.words), random.Random(args.seed)
    voices = VOICES + EXTRA_VOICES
    espeak = Espeak()
    resampler = torchaudio.transforms.Resample(espeak.sample_rate, TARGET_RATE)
    args.out.mkdir(parents=True, exist_ok=True)
    lines, seconds = [], 0.0
    for number in range(args.sentences):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 9))) + "."
        voice, rate, pitch = voices[number % len(voices)], rng.randint(130, 200), rng.randint(30, 70)
        samples, _ = espeak.synthesize(text, voice, rate, pitch)
        audio = resampler(torch.from_numpy(samples)).numpy()
        soundfile.write(args.out / f"w{number:04d}.flac", audio, TARGET_RATE, subtype="PCM_16")
        lines.append(f"w{number:04d}\t{voice}\t{rate}\t{pitch}\t{text}\n")
        seconds += len(audio) / TARGET_RATE
    (args.out / "sentences.tsv").write_text("utt_id\tvoice\trate_wpm\tpitch\ttext\n" + "".join(lines))
    print(f"synthesized {len(lines)} sentences, {seconds / 60:.1f} min, into {args.out}")


if __name__ == "__main__":
    main()
