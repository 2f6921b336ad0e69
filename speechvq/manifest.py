"""Dataset listings: a folder scan, a fairseq .tsv manifest, or a JSONL manifest -> [Utterance].

Only listing happens here (cheap, no decoding), so a bad path fails before any real work."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import corpora
from .audio import AUDIO_EXTENSIONS
from .errors import DatasetNotFoundError, EmptyDatasetError, ManifestError
from .records import Utterance


def list_utterances(path: str | Path) -> list[Utterance]:
    """List a dataset: a folder (recursive), a fairseq `.tsv`, a `.jsonl` manifest, or a corpus format of
    corpora.py (lhotse, WebDataset, Hugging Face datasets)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(path)
    if kind := corpora.kind_of(path):
        utterances = corpora.read_corpus(path, kind)
    elif path.is_dir():
        utterances = scan_folder(path)
    elif path.suffix == ".tsv":
        utterances = read_fairseq_tsv(path)
    elif path.suffix == ".jsonl":
        utterances = read_jsonl_manifest(path)
    else:
        raise ManifestError(
            path,
            None,
            "expected a folder, a fairseq .tsv, a .jsonl manifest, a lhotse manifest, "
            "WebDataset .tar shards or a Hugging Face dataset (save_to_disk folder or .parquet)",
        )
    if not utterances:
        raise EmptyDatasetError(path)
    _check_unique_ids(path, utterances)
    return utterances


def scan_folder(root: Path) -> list[Utterance]:
    root = root.resolve()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return [Utterance(utt_id=_utt_id(p.relative_to(root)), path=p) for p in files]


def read_fairseq_tsv(path: Path) -> list[Utterance]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ManifestError(path, None, "empty manifest (the first line must be the root folder)")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    utterances = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ManifestError(path, number, f"expected 'relative/path<TAB>num_samples', got {line!r}")
        try:
            num_samples = int(fields[1])
        except ValueError:
            raise ManifestError(path, number, f"num_samples is not an integer: {fields[1]!r}") from None
        audio_path = (root / fields[0]).resolve()
        if not audio_path.is_relative_to(root.resolve()):
            raise ManifestError(path, number, f"{fields[0]!r} points outside the manifest root {root}")
        utterances.append(Utterance(utt_id=_utt_id(Path(fields[0])), path=audio_path, num_samples=num_samples))
    return utterances


def read_jsonl_manifest(path: Path) -> list[Utterance]:
    """JSONL: one object per line with `path` (absolute or relative to the manifest), optional `id`, `num_samples`,
    and optional `start` and `duration` (seconds): a segment of the file, an utterance of its own (its id, where
    not given, is the file's id and the start in milliseconds: `talk-0012340`)."""
    utterances = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(path, number, f"invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict) or "path" not in record:
            raise ManifestError(path, number, "each line must be an object with a 'path' key")
        audio_path = Path(record["path"])
        if not audio_path.is_absolute():
            audio_path = path.parent / audio_path
        segment = _segment(path, number, record)
        utt_id = record.get("id") or _jsonl_id(audio_path, path.parent)
        if segment and not record.get("id"):
            utt_id += f"-{round(segment[0] * 1000):07d}"
        utterances.append(Utterance(str(utt_id), audio_path, record.get("num_samples"), segment=segment))
    return utterances


def _segment(path: Path, number: int, record: dict) -> tuple[float, float] | None:
    """(start, duration) in seconds from a manifest record's `start` and `duration`; None when it has neither."""
    if "start" not in record and "duration" not in record:
        return None
    start, duration = record.get("start", 0.0), record.get("duration")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, duration))
    if not numbers or start < 0 or duration <= 0:
        raise ManifestError(path, number, f"a segment needs start >= 0 and duration > 0 (seconds), got {record!r}")
    return float(start), float(duration)


def listing_root(listing: list[Utterance]) -> Path:
    """The folder a run's <split>.tsv names its files from: the whole listing's, not a shard's, so shard manifests
    concatenate into the full one."""
    return Path(os.path.commonpath([utt.path.parent for utt in listing]))


def shard(utterances: list[Utterance], num_shards: int, shard_index: int) -> list[Utterance]:
    """fairseq's rule: shard r of n takes utterances [round(N*r/n), round(N*(r+1)/n))."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    total = len(utterances)
    return utterances[round(total * shard_index / num_shards) : round(total * (shard_index + 1) / num_shards)]


def _utt_id(relative_path: Path) -> str:
    return relative_path.with_suffix("").as_posix()


def _jsonl_id(audio_path: Path, manifest_dir: Path) -> str:
    # Relative to the manifest's folder when inside it, else the file name: never an absolute path.
    try:
        return _utt_id(audio_path.resolve().relative_to(manifest_dir.resolve()))
    except ValueError:
        return audio_path.stem


def _check_unique_ids(source: Path, utterances: list[Utterance]) -> None:
    seen: set[str] = set()
    for utt in utterances:
        if utt.utt_id in seen:
            raise ManifestError(source, None, f"duplicate utterance id {utt.utt_id!r}")
        seen.add(utt.utt_id)
