"""Telephone-band copies of training audio (data/librispeech -> data/librispeech_8k): each file resampled to 8 kHz,
so an encoder trained on them also sees speech without the 4-8 kHz band. The demo's FSDD recordings are 8 kHz;
an encoder that only ever heard 16 kHz speech meets a channel on them that it never learned to ignore. Different
speakers and words from the evaluation data: the copies add a channel, not content.

The source folder's README (attribution and license) is kept beside the copies with a line saying what was done.
Usage: python scripts/make_narrowband.py [--source data/librispeech] [--out data/librispeech_8k] [--rate 8000]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import soundfile
import torch

from speechvq.audio import resample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("data/librispeech"))
    parser.add_argument("--out", type=Path, default=Path("data/librispeech_8k"))
    parser.add_argument("--rate", type=int, default=8000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    files = sorted(args.source.glob("*.flac"))
    for path in files:
        samples, rate = soundfile.read(path, dtype="float32")
        narrow = resample(torch.from_numpy(samples), rate, args.rate).numpy()
        soundfile.write(args.out / path.name, narrow, args.rate, subtype="PCM_16")
        seconds += len(narrow) / args.rate
    readme = (args.source / "README.md").read_text(encoding="utf-8")
    note = (
        f"\n\n## This folder\n\nEvery file of `{args.source.as_posix()}` resampled to {args.rate} Hz (torchaudio's "
        f"band-limited sinc resampler), 16-bit FLAC, by `scripts/make_narrowband.py`: the same recordings, the same "
        "license and attribution as above.\n"
    )
    (args.out / "README.md").write_text(readme.rstrip("\n") + note, encoding="utf-8")
    for name in ("LICENSE.TXT", "SPEAKERS.TXT"):
        if (args.source / name).exists():
            shutil.copy(args.source / name, args.out / name)
    print(f"wrote {len(files)} files, {seconds / 60:.1f} min at {args.rate} Hz, into {args.out}")


if __name__ == "__main__":
    main()
