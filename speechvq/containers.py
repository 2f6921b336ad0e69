"""Audio held inside a bigger file: a member of a WebDataset tar shard, or a row of a Hugging Face dataset (a
`save_to_disk` folder or a parquet shard). `read_member(path, member)` gives the encoded bytes, which speechvq's
own decoder (soundfile) then reads like a file. Each process opens a container once and keeps it (decoding workers
each have their own), so a member costs a seek and a read, not a scan."""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path

from .errors import AudioDecodeError
from .records import location

AUDIO_COLUMN = "audio"  # the Hugging Face column of {"bytes", "path"} records (datasets.Audio)


def read_member(path: Path, member: str) -> bytes:
    """The bytes of `member` (a tar member name, or a row number) of the container at `path`."""
    where = location(path, member)
    try:
        if path.suffix == ".tar":
            offset, size = _tar_index(path)[member]
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        elif path.suffix == ".parquet":
            data = _bytes_or_file(path.parent, _parquet_audio(path, int(member)))
        else:
            data = _bytes_or_file(path, saved_dataset(path)[int(member)][AUDIO_COLUMN])
    except (OSError, KeyError, ValueError, IndexError, tarfile.TarError) as exc:
        raise AudioDecodeError(where, f"cannot read it from its container ({type(exc).__name__}: {exc})") from None
    if not data:
        raise AudioDecodeError(where, "the container holds no bytes for it")
    return data


@functools.lru_cache(maxsize=8)
def _tar_index(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size): the headers only, read once per process."""
    with tarfile.open(path, "r:") as tar:
        return {info.name: (info.offset_data, info.size) for info in tar.getmembers() if info.isfile()}


def _bytes_or_file(folder: Path, audio: dict) -> bytes | None:
    """A datasets.Audio record's bytes; where it has none, the file its path names (relative: to the dataset)."""
    if audio.get("bytes") or not audio.get("path"):
        return audio.get("bytes")
    file = Path(audio["path"])
    return (file if file.is_absolute() else folder / file).read_bytes()


@functools.lru_cache(maxsize=8)
def saved_dataset(path: Path):
    """A datasets.save_to_disk folder, memory-mapped, with its audio left encoded."""
    import datasets

    return datasets.load_from_disk(str(path)).cast_column(AUDIO_COLUMN, datasets.Audio(decode=False))


def _parquet_audio(path: Path, row: int) -> dict:
    first, table = _row_group(path, row)
    return table.column(AUDIO_COLUMN)[row - first].as_py()


_LAST_ROW_GROUP: dict = {}  # path -> (first row, the row group's audio column): rows are read in order


def _row_group(path: Path, row: int):
    cached = _LAST_ROW_GROUP.get(path)
    if cached and cached[0] <= row < cached[0] + cached[1].num_rows:
        return cached
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    first = 0
    for index in range(handle.num_row_groups):
        rows = handle.metadata.row_group(index).num_rows
        if row < first + rows:
            cached = (first, handle.read_row_group(index, columns=[AUDIO_COLUMN]))
            _LAST_ROW_GROUP.clear()
            _LAST_ROW_GROUP[path] = cached
            return cached
        first += rows
    raise IndexError(f"row {row} of a file of {first} rows")
