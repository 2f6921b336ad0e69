"""The one place that writes files. Everything is written atomically: to a temporary file in
the destination folder, flushed and fsynced, then renamed over the target, so a crash never
leaves a partial file under the final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import torch

from .errors import DiskFullError

# mkstemp creates files readable by the owner only; finished artifacts get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(path, f"{os.strerror(exc.errno)} ({size_text(free_bytes(path.parent))} free)") from None
        raise
    _fsync_dir(path.parent)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; quota exceeded


def size_text(num_bytes: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages, in the unit that keeps two or three digits."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.3g} {unit}" if unit != "B" and num_bytes < 100 else f"{num_bytes:,.0f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.3g} TiB"  # pragma: no cover - the loop returns


def free_bytes(folder: str | Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `folder` (0 where it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def remove_stale_temps(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temporary siblings that atomic_open left for files called `name` (a glob) in `folder`: a process
    killed mid-write leaves its `.NAME.XXXXXXXX.tmp` behind. Call it where a stage starts (again) to write those
    files, which no other process writes. Returns what was removed."""
    removed = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for stale in removed:
        stale.unlink(missing_ok=True)
    return removed


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not all file systems allow opening a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def units_to_line(units: torch.Tensor) -> str:
    return " ".join(map(str, units.tolist()))


def deduplicate(units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run-length encode a unit sequence: (units without repeats, duration of each in frames)."""
    values, counts = deduplicate_rows(units.unsqueeze(1))
    return values[:, 0], counts


def deduplicate_rows(units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run-length encode (num_frames, num_codebooks) codes, a frame being a repeat when all its codes are."""
    if units.shape[0] == 0:
        return units.clone(), torch.zeros(0, dtype=torch.long)
    # Run starts by elementwise comparison: 10x faster than torch.unique_consecutive(dim=0), which was a tenth of
    # an end-to-end CPU run.
    starts = torch.ones(units.shape[0], dtype=torch.bool, device=units.device)
    starts[1:] = (units[1:] != units[:-1]).any(dim=1)
    index = starts.nonzero().squeeze(1)
    counts = torch.diff(index, append=torch.tensor([units.shape[0]], device=units.device))
    return units[index], counts


def write_wav(path: str | Path, samples: torch.Tensor, sample_rate: int) -> None:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(
        buffer, samples.detach().cpu().float().clamp(-1, 1).numpy(), sample_rate, format="WAV", subtype="PCM_16"
    )
    write_bytes(path, buffer.getvalue())


def write_km_dict(path: str | Path, codebook_size: int) -> None:
    """fairseq dictionary for .km labels: `<unit> 1` per codeword."""
    write_text(path, "".join(f"{unit} 1\n" for unit in range(codebook_size)))


def write_fairseq_tsv(path: str | Path, root: Path, rows: Iterable[tuple[str, int]]) -> None:
    """fairseq manifest: the root folder, then `relative/path<TAB>num_samples` per utterance."""
    with atomic_open(path) as handle:
        handle.write(f"{root}\n")
        handle.write(fairseq_tsv_rows(rows))


def fairseq_tsv_rows(rows: Iterable[tuple[str, int]]) -> str:
    """The lines of a fairseq manifest after its root: `relative/path<TAB>num_samples` each."""
    return "".join(f"{rel_path}\t{num_samples}\n" for rel_path, num_samples in rows)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
