"""Frame-level phone labels for evaluation: a TSV (`utt_id<TAB>labels at a fixed rate`) or a folder of
Praat TextGrid files with a phones tier (utterance id = path relative to the folder, without suffix)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from .errors import AlignmentError

SILENCE = "sil"


def read_alignments(path: str | Path, rate_hz: float = 100.0, tier: str = "phones") -> dict[str, list[str]]:
    """utt_id -> one phone label per frame at rate_hz."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AlignmentError(path, "path does not exist")
    if path.is_dir():
        grids = sorted(path.rglob("*.TextGrid"))
        if not grids:
            raise AlignmentError(path, "folder holds no .TextGrid files")
        return {g.relative_to(path).with_suffix("").as_posix(): read_textgrid(g, rate_hz, tier) for g in grids}
    if path.suffix.lower() == ".textgrid":
        return {path.stem: read_textgrid(path, rate_hz, tier)}
    return read_alignment_tsv(path)


def read_alignment_tsv(path: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, sep, frames = line.partition("\t")
        if not sep:
            raise AlignmentError(f"{path}:{number}", "expected 'utt_id<TAB>space-separated labels'")
        if utt_id in labels:
            raise AlignmentError(f"{path}:{number}", f"duplicate utterance id {utt_id!r}")
        labels[utt_id] = frames.split()
    return labels


# Tokens of both TextGrid layouts (long "key = value" and short), in file order: quoted strings
# (with "" as an escaped quote), numbers and <exists> flags. Item/interval indices like [3] are removed first.
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|<(exists|absent)>')


def read_textgrid(path: Path, rate_hz: float = 100.0, tier: str = "phones") -> list[str]:
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    tokens = [
        m.group(1).replace('""', '"') if m.group(1) is not None else (m.group(2) or m.group(3))
        for m in _TOKEN.finditer(re.sub(r"\[\s*\d*\s*\]", "", text))
    ]
    if len(tokens) < 2 or tokens[0] != "ooTextFile" or tokens[1] != "TextGrid":
        raise AlignmentError(path, "not a Praat TextGrid (missing 'ooTextFile' / 'TextGrid' header)")
    try:
        position = 2 + 2  # header, global xmin, xmax
        if tokens[position] == "exists":
            position += 1
        num_tiers = int(tokens[position])
        position += 1
        for _ in range(num_tiers):
            tier_class, name = tokens[position], tokens[position + 1]
            count = int(tokens[position + 4])
            position += 5
            width = 3 if tier_class == "IntervalTier" else 2
            entries = tokens[position : position + width * count]
            position += width * count
            if name == tier:
                if tier_class != "IntervalTier":
                    raise AlignmentError(path, f"tier {tier!r} is a {tier_class}, expected an IntervalTier")
                intervals = [
                    (float(entries[i]), float(entries[i + 1]), entries[i + 2].strip())
                    for i in range(0, len(entries), 3)
                ]
                return _intervals_to_frames(intervals, rate_hz)
    except (IndexError, ValueError) as exc:
        raise AlignmentError(path, f"malformed TextGrid ({exc})") from None
    raise AlignmentError(path, f"no tier named {tier!r}")


def _intervals_to_frames(intervals: list[tuple[float, float, str]], rate_hz: float) -> list[str]:
    """Label of frame j = the interval holding the frame's centre (j + 0.5) / rate_hz; empty text is silence."""
    end = max(xmax for _, xmax, _ in intervals)
    labels = [SILENCE] * int(math.floor(end * rate_hz + 1e-9))
    for xmin, xmax, text in intervals:
        first = max(0, math.ceil(xmin * rate_hz - 0.5 - 1e-9))
        last = min(len(labels), math.ceil(xmax * rate_hz - 0.5 - 1e-9))
        for j in range(first, last):
            labels[j] = text or SILENCE
    return labels
