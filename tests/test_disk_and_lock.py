"""A long job meets a full disk and a second launch: a disk that fills mid-stage is a named error naming the file and
a rerun after space is freed resumes to the same bytes; the features stage refuses to start when the frames cannot
fit; one writer per run folder (a live holder is named, a dead one's lock is taken over)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections import namedtuple

import pytest
from conftest import REPO, write_dataset

from speechvq import fileio, pipeline
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.errors import DiskFullError, RunFolderBusyError
from speechvq.run_lock import _start_time

OUTPUTS = ["train.km", "units.jsonl", "train.tsv", "codebook.safetensors", "features/index.json"]


def config_for(corpus) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(corpus), alignments=None, num_workers=0, batch_seconds=1, part_mb=0.01),
        codebook=CodebookConfig(codebook_size=6, n_init=1, max_iter=10),
        stages=["features", "train", "quantize"],
        device="cpu",
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk") / "corpus"
    write_dataset(root)
    return root


def test_a_disk_that_fills_mid_stage_is_named_and_the_rerun_resumes_to_the_same_bytes(corpus, tmp_path, monkeypatch):
    pipeline.run(config_for(corpus), tmp_path / "clean")
    real_fsync, writes = os.fsync, []

    def fills_up(fd):  # the fourth file written fails as a full disk does, at its flush to the device
        writes.append(fd)
        if len(writes) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fills_up)
    with pytest.raises(DiskFullError, match=r"no space left for .*features.*No space left on device") as error:
        pipeline.run(config_for(corpus), tmp_path / "full")
    assert not (tmp_path / "full" / "features" / "index.json").exists()
    assert not list((tmp_path / "full").rglob("*.tmp")), "the half-written file must not stay"
    assert not (tmp_path / "full" / ".speechvq" / "lock").exists(), "a failed run releases its folder"
    monkeypatch.undo()
    pipeline.run(config_for(corpus), tmp_path / "full")
    for name in OUTPUTS:
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert "features" in str(error.value.path)


def test_the_features_stage_refuses_to_start_without_room_for_its_frames(corpus, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 20_000, 20_000))
    expected = r"features: the features need about [\d.]+ KiB \(.* frames/s x 39 float32\).* has 19.5 KiB free"
    with pytest.raises(DiskFullError, match=expected):
        pipeline.run(config_for(corpus), tmp_path / "run")
    assert not list((tmp_path / "run" / "features").glob("part-*"))
    monkeypatch.undo()
    assert pipeline.run(config_for(corpus), tmp_path / "run").counts["processed"] == 6


def lock_of(process: subprocess.Popen) -> dict:
    return {"host": socket.gethostname(), "pid": process.pid, "start_time": _start_time(process.pid), "since": "then"}


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(corpus, tmp_path):
    """A live process holds the folder: the run stops before writing, naming its host and pid, with exit status 2
    on the command line."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = tmp_path / "run" / ".speechvq" / "lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps(lock_of(holder)))
        with pytest.raises(RunFolderBusyError, match=rf"in use by process {holder.pid} on {socket.gethostname()}"):
            pipeline.run(config_for(corpus), tmp_path / "run")
        assert not (tmp_path / "run" / "features").exists() and lock.exists()
        done = subprocess.run(
            [sys.executable, "-m", "speechvq.run", f"data.path={corpus}", "data.num_workers=0", "stages=[features]",
             f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2 and f"RunFolderBusyError: {tmp_path / 'run'} is in use" in done.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_or_another_process_with_its_pid_is_taken_over(corpus, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / "run" / ".speechvq" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps(lock_of(gone)))
    assert pipeline.run(config_for(corpus), tmp_path / "run").counts["processed"] == 6
    assert not lock.exists()
    # a live process whose pid was recycled (another start time) does not hold the folder either
    recycled = {**lock_of(gone), "pid": os.getpid(), "start_time": "1"}
    lock.write_text(json.dumps(recycled))
    pipeline.run(config_for(corpus), tmp_path / "run")
    assert not lock.exists()
