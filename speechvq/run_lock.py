"""One writer per run folder. A run holds `.speechvq/lock` (host, pid, the process's start time) while its stages
run; a second run on the folder (a double launch, a SLURM requeue while the first job still runs) is refused by name
instead of racing it. A lock whose process is gone (killed: SIGKILL leaves it behind) is taken over, so the rerun
that resumes a killed run is never blocked. Only a process on this host can be checked: a lock from another host
is refused with the way to clear it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import RunFolderBusyError

log = logging.getLogger(__name__)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (so a recycled pid is not taken for the holder); None if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    started = _start_time(pid)
    return started is None or holder.get("start_time") in (None, started)


def _claim(path: Path) -> bool:
    """Create the lock file exclusively with this process's identity; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    identity = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    with os.fdopen(fd, "w") as handle:
        json.dump(identity, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


@contextlib.contextmanager
def hold(folder: str | Path, lock_file: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; RunFolderBusyError if a live process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # claim, or take over a stale lock and claim again (another rerun may win the race)
        if _claim(lock_file):
            break
        try:
            holder = json.loads(lock_file.read_text() or "{}")
        except (OSError, ValueError):  # being written this instant, or removed: look again
            time.sleep(0.05)
            continue
        if holder.get("host") != socket.gethostname() or _alive(holder):
            host, pid = holder.get("host", "?"), int(holder.get("pid", -1))
            raise RunFolderBusyError(folder, host, pid, holder.get("since", "?"))
        log.warning("%s: taking over the lock of process %s, which is gone", folder, holder.get("pid"))
        lock_file.unlink(missing_ok=True)
    else:
        raise RunFolderBusyError(folder, "?", -1, "just now: another process claimed it while this one looked")
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
