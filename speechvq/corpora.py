"""Corpora as people hold them, listed as utterances: lhotse manifests (recordings, or cuts: segments of them),
WebDataset tar shards and Hugging Face datasets (a `save_to_disk` folder or parquet shards, audio as bytes or
paths). Each is read with its own library (the speechvq[corpora] extra: lhotse, webdataset, datasets / pyarrow);
the audio itself is decoded by speechvq's decoder, from the file or from the container (containers.py)."""

from __future__ import annotations

import importlib
import tarfile
from pathlib import Path

from .audio import AUDIO_EXTENSIONS
from .containers import AUDIO_COLUMN
from .errors import ManifestError
from .records import Utterance

SAVED_DATASET_MARKER = "dataset_info.json"  # what datasets.save_to_disk writes beside its arrow files


def kind_of(path: Path) -> str | None:
    """Which of these formats `path` holds (None: none of them; a folder of audio or a speechvq manifest)."""
    name = path.name
    if path.is_dir():
        if (path / SAVED_DATASET_MARKER).exists():
            return "hf_saved"
        if any(path.glob("*.parquet")):
            return "hf_parquet"
        if any(path.glob("*.tar")):
            return "webdataset"
        return None
    if name.endswith(".jsonl.gz") or (name.endswith(".jsonl") and _looks_like_lhotse(path)):
        return "lhotse"
    return {".tar": "webdataset", ".parquet": "hf_parquet"}.get(path.suffix)


def read_corpus(path: Path, kind: str) -> list[Utterance]:
    return {"lhotse": read_lhotse, "webdataset": read_webdataset, "hf_saved": read_saved_dataset,
            "hf_parquet": read_parquet_shards}[kind](path)  # fmt: skip


def _looks_like_lhotse(path: Path) -> bool:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    return '"sources"' in first or '"recording"' in first


def _library(name: str, path: Path):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ManifestError(path, None, f"reading it needs {name}: pip install 'speechvq[corpora]'") from None


# ------------------------------------------------------------------ lhotse
def read_lhotse(path: Path) -> list[Utterance]:
    """A RecordingSet (each recording an utterance) or a CutSet (each cut: the segment start .. start + duration
    of its recording), .jsonl or .jsonl.gz. Relative source paths are taken from the manifest's folder."""
    lhotse = _library("lhotse", path)
    manifest = lhotse.load_manifest(path)
    if isinstance(manifest, lhotse.RecordingSet):
        return [Utterance(rec.id, _recording_file(path, rec)) for rec in manifest]
    if not isinstance(manifest, lhotse.CutSet):
        raise ManifestError(path, None, f"expected lhotse cuts or recordings, got a {type(manifest).__name__}")
    utterances = []
    for cut in manifest:
        recording = getattr(cut, "recording", None)
        if recording is None:
            raise ManifestError(path, None, f"cut {cut.id!r} is a {type(cut).__name__}: only cuts of one recording")
        file = _recording_file(path, recording)
        utterances.append(Utterance(cut.id, file, segment=(float(cut.start), float(cut.duration))))
    return utterances


def _recording_file(manifest: Path, recording) -> Path:
    sources = recording.sources
    if len(sources) != 1 or sources[0].type != "file":
        kinds = [source.type for source in sources]
        raise ManifestError(manifest, None, f"recording {recording.id!r} has sources {kinds}: one 'file' is read")
    file = Path(sources[0].source)
    return file if file.is_absolute() else manifest.parent / file


# ------------------------------------------------------------------ WebDataset
def read_webdataset(path: Path) -> list[Utterance]:
    """A .tar shard, or a folder of them (in name order): each sample's audio member is an utterance whose id is
    the sample's key (webdataset's rule: the member name up to the first dot of its base name)."""
    base_plus_ext = _library("webdataset.tariterators", path).base_plus_ext
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    utterances = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:
                members = [info.name for info in tar.getmembers() if info.isfile()]
        except (OSError, tarfile.TarError) as exc:
            raise ManifestError(shard, None, f"not a readable tar shard ({exc})") from None
        keys: dict[str, str] = {}
        for name in members:
            key, ext = base_plus_ext(name)
            if key and f".{ext.rsplit('.', 1)[-1].lower()}" in AUDIO_EXTENSIONS:
                if key in keys:
                    raise ManifestError(shard, None, f"sample {key!r} has two audio members: {keys[key]}, {name}")
                keys[key] = name
        utterances += [Utterance(key, shard, member=name) for key, name in keys.items()]
    return utterances


# ------------------------------------------------------------------ Hugging Face datasets
def read_saved_dataset(path: Path) -> list[Utterance]:
    """A datasets.save_to_disk folder: each row an utterance (member: its row number), read memory-mapped."""
    from .containers import saved_dataset

    _library("datasets", path)
    table = saved_dataset(path).data.table
    if AUDIO_COLUMN not in table.column_names:
        raise ManifestError(path, None, f"no {AUDIO_COLUMN!r} column; columns are {table.column_names}")
    audio_paths = table.column(AUDIO_COLUMN).combine_chunks().field("path").to_pylist()
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    return _rows(path, ids, audio_paths, prefix=path.name)


def read_parquet_shards(path: Path) -> list[Utterance]:
    """A parquet shard of a Hugging Face dataset, or a folder of them (in name order): each row an utterance
    (member: its row number in the shard). Only the ids and the audio paths are read here, not the audio."""
    pq = _library("pyarrow.parquet", path)
    utterances = []
    for shard in sorted(path.glob("*.parquet")) if path.is_dir() else [path]:
        columns = pq.read_schema(shard).names
        if AUDIO_COLUMN not in columns:
            raise ManifestError(shard, None, f"no {AUDIO_COLUMN!r} column; columns are {columns}")
        table = pq.read_table(shard, columns=[f"{AUDIO_COLUMN}.path"] + (["id"] if "id" in columns else []))
        ids = table.column("id").to_pylist() if "id" in columns else None
        utterances += _rows(shard, ids, table.column("path").to_pylist(), prefix=shard.stem)
    return utterances


def _rows(container: Path, ids: list | None, audio_paths: list, prefix: str) -> list[Utterance]:
    """The rows of one container as utterances: ids from its `id` column, else the audio's path stems where every
    row has one and they are unique, else `<prefix>/<row>`."""
    if ids is None:
        stems = [Path(p).stem if p else None for p in audio_paths]
        unique = all(stems) and len(set(stems)) == len(stems)
        ids = stems if unique else [f"{prefix}/{row:07d}" for row in range(len(audio_paths))]
    return [Utterance(str(utt_id), container, member=str(row)) for row, utt_id in enumerate(ids)]
