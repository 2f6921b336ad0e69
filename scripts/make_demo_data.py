"""Build data/demo: FSDD recordings (copied, with attribution) + English sentences synthesized with
espeak-ng, with frame-level phone alignments taken from espeak-ng's own phoneme events.

Needs the Debian package espeak-ng (libespeak-ng.so.1) only when regenerating; the outputs are committed.
Usage: python scripts/make_demo_data.py [--out data/demo] [--fsdd ../shared/data/fsdd] [--sentences 120]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import random
import shutil
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

TARGET_RATE = 16000
LABEL_RATE_HZ = 100

# --- espeak-ng C API (speak_lib.h), the parts we use ---------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED, EVENT_END, EVENT_PHONEME = 0, 5, 7
POS_CHARACTER, CHARS_UTF8, ENDPAUSE = 1, 1, 0x1000
PARAM_RATE, PARAM_PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the message
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """Synchronous synthesis that returns the samples and (phoneme, start_ms) events."""

    def __init__(self):
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 200, None, INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._end_ms: int | None = None
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == EVENT_PHONEME:
                self._events.append((event.id.string.decode("ascii", "replace"), event.audio_position))
            elif event.type == EVENT_END:
                self._end_ms = event.audio_position
            index += 1
        return 0

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
        self._chunks, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(PARAM_RATE, rate_wpm, 0)
        self.lib.espeak_SetParameter(PARAM_PITCH, pitch, 0)
        data = text.encode() + b"\0"
        status = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks).astype(np.float32) / 32768.0
        return samples, list(self._events)


def frame_labels(events: list[tuple[str, int]], duration_s: float) -> list[str]:
    """One label per 10 ms frame: the phoneme whose [start, next start) holds the frame's centre.
    espeak-ng pause phonemes ('_', '_:', ...) and the time before the first phoneme are silence."""
    starts = [ms / 1000 for _, ms in events]
    names = ["sil" if name.startswith("_") or not name.strip() else name.strip() for name, _ in events]
    labels = []
    for frame in range(int(duration_s * LABEL_RATE_HZ)):
        centre = (frame + 0.5) / LABEL_RATE_HZ
        current = "sil"
        for start, name in zip(starts, names):
            if start > centre:
                break
            current = name
        labels.append(current)
    return labels


SUBJECTS = [
    "the old man",
    "a young girl",
    "my brother",
    "the farmer",
    "our teacher",
    "the small dog",
    "a tired nurse",
    "the pilot",
    "her mother",
    "the quiet boy",
    "a busy cook",
    "the driver",
]
VERBS = ["carried", "painted", "found", "washed", "sold", "opened", "watched", "dropped", "fixed", "lifted"]
OBJECTS = [
    "a red box",
    "the heavy door",
    "seven apples",
    "the broken chair",
    "a warm coat",
    "the long rope",
    "three blue cups",
    "the wooden boat",
    "a bag of rice",
    "the green lamp",
    "the silver key",
]
ENDINGS = [
    "before dinner",
    "in the morning",
    "near the river",
    "after the storm",
    "on a cold day",
    "with great care",
    "at the station",
    "by the window",
    "without a word",
    "under the bridge",
]
VOICES = ["en-us", "en", "en-gb-scotland", "en-us+f3", "en+m3", "en-029", "en-us+m2", "en+f2"]


def make_sentences(count: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    while len(seen) < count:
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
        seen.add(sentence[0].upper() + sentence[1:])
    return sorted(seen)


def copy_fsdd(source: Path, out: Path, per_speaker_digit: int) -> int:
    target = out / "fsdd"
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for digit in range(10):
        for speaker in ("george", "jackson", "nicolas"):
            for index in range(per_speaker_digit):
                name = f"{digit}_{speaker}_{index}.wav"
                shutil.copyfile(source / "recordings" / name, target / name)
                copied += 1
    shutil.copyfile(source / "README.md", target / "README.md")
    return copied


def write_speakers(out: Path) -> int:
    """speakers.tsv (utt_id, speaker) for ABX: the espeak voice of each sentence, the FSDD speaker from its name."""
    rows = [line.split("\t")[:2] for line in (out / "espeak" / "sentences.tsv").read_text().splitlines()[1:]]
    rows += [(f"fsdd/{p.stem}", p.stem.split("_")[1]) for p in sorted((out / "fsdd").glob("*.wav"))]
    (out / "speakers.tsv").write_text("utt_id\tspeaker\n" + "".join(f"{u}\t{s}\n" for u, s in rows))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"))
    parser.add_argument("--fsdd", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/fsdd")
    parser.add_argument("--per-speaker-digit", type=int, default=6)
    parser.add_argument("--sentences", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    copied = copy_fsdd(args.fsdd, args.out, args.per_speaker_digit)
    rng = random.Random(args.seed)
    espeak = Espeak()
    resampler = torchaudio.transforms.Resample(espeak.sample_rate, TARGET_RATE)
    speech_dir = args.out / "espeak"
    speech_dir.mkdir(parents=True, exist_ok=True)
    alignment_lines, text_lines = [], []
    for number, sentence in enumerate(make_sentences(args.sentences, rng)):
        voice = VOICES[number % len(VOICES)]
        rate, pitch = rng.randint(140, 190), rng.randint(35, 65)
        samples, events = espeak.synthesize(sentence, voice, rate, pitch)
        audio = resampler(torch.from_numpy(samples)).numpy()
        utt_id = f"espeak/s{number:03d}"
        soundfile.write(speech_dir / f"s{number:03d}.flac", audio, TARGET_RATE, subtype="PCM_16")
        labels = frame_labels(events, len(audio) / TARGET_RATE)
        alignment_lines.append(f"{utt_id}\t{' '.join(labels)}\n")
        text_lines.append(f"{utt_id}\t{voice}\t{rate}\t{pitch}\t{sentence}\n")
    (args.out / "alignments.tsv").write_text("".join(alignment_lines))
    (speech_dir / "sentences.tsv").write_text("utt_id\tvoice\trate_wpm\tpitch\ttext\n" + "".join(text_lines))
    write_speakers(args.out)
    print(f"copied {copied} FSDD recordings; synthesized {len(alignment_lines)} sentences into {speech_dir}")


if __name__ == "__main__":
    main()
