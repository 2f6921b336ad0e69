"""Phone alignments for the demo's FSDD recordings, by forced alignment with pocketsphinx (its bundled US English
acoustic model and dictionary, offline). The transcript of `{digit}_{speaker}_{take}.wav` is the digit's word.

Writes one line per recording, `fsdd/<stem><TAB>labels at 100 Hz` (ARPAbet phones without stress, `sil` for
silence), into the demo's alignments.tsv, replacing any earlier fsdd/ lines and keeping the others.
Needs the `data` extra (pip install -e '.[data]'); the output is committed, so the demo does not.
Usage: python scripts/align_fsdd.py [--data data/demo]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import soundfile
from pocketsphinx import Decoder
from scipy.signal import resample_poly

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MODEL_RATE = 16000  # pocketsphinx's en-us model; FSDD is 8 kHz and is upsampled
FRAME_S = 0.01
BEAM = 1e-60  # wider than the default 1e-48: with it, every demo recording aligns (6_nicolas_5 did not)


def align(path: Path) -> list[str]:
    """One phone label per 10 ms frame of the recording at `path`. A decoder per file: after a phone alignment,
    pocketsphinx 5 cannot set up the next one on the same decoder."""
    decoder = Decoder(samprate=MODEL_RATE, bestpath=False, loglevel="FATAL", beam=BEAM, wbeam=BEAM, pbeam=BEAM)
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    upsampled = resample_poly(samples, MODEL_RATE, rate) if rate != MODEL_RATE else samples
    pcm = (np.clip(upsampled, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
    decoder.set_align_text(WORDS[int(path.stem.split("_")[0])])
    _decode(decoder, pcm)  # word alignment of the transcript
    decoder.set_alignment()
    _decode(decoder, pcm)  # phone alignment within it
    num_frames = math.floor(len(samples) / rate / FRAME_S + 0.5)
    labels = ["sil"] * num_frames
    for word in decoder.get_alignment():
        for phone in word:
            name = "sil" if phone.name in ("SIL", "+SPN+", "+NSN+") else phone.name.lower()
            labels[phone.start : phone.start + phone.duration] = [name] * phone.duration
    return labels[:num_frames]


def _decode(decoder: Decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    args = parser.parse_args()
    table = args.data / "alignments.tsv"
    kept = [line for line in table.read_text().splitlines(keepends=True) if not line.startswith("fsdd/")]
    recordings = sorted((args.data / "fsdd").glob("*.wav"))
    lines = [f"fsdd/{path.stem}\t{' '.join(align(path))}\n" for path in recordings]
    table.write_text("".join(kept + lines))
    print(f"aligned {len(lines)} FSDD recordings into {table}")


if __name__ == "__main__":
    main()
