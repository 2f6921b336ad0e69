import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechvq import fileio
from speechvq.featstore import FeatureWriter

REPO = Path(__file__).resolve().parents[1]


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.km"
    target.write_text("old complete content\n")
    with pytest.raises(RuntimeError), fileio.atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old complete content\n"  # the old file is untouched
    assert list(tmp_path.iterdir()) == [target]  # and no temporary file is left


def test_a_write_killed_mid_way_leaves_a_temp_that_the_next_writer_removes(tmp_path):
    """SIGKILL skips atomic_open's cleanup: the hidden temporary sibling stays (never under the final name), and a
    features stage starting again in that folder deletes it; files it does not write are left alone."""
    part = tmp_path / "features" / "part-00001.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from speechvq.fileio import atomic_open\n"
         "writing = atomic_open(sys.argv[1]); handle = writing.__enter__()\n"
         "handle.write('half a part'); handle.flush(); print('writing', flush=True); time.sleep(60)", str(part)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    stale = list(part.parent.glob(".part-00001.safetensors.*.tmp"))
    assert len(stale) == 1 and not part.exists()
    (part.parent / "notes.tmp").write_text("not ours")  # not an atomic_open temp
    FeatureWriter(part.parent, {}, 3, 100.0)
    assert sorted(p.name for p in part.parent.iterdir()) == ["notes.tmp"]


def test_remove_stale_temps_takes_only_the_named_files_temps(tmp_path):
    names = [".a.km.x1y2.tmp", ".b.km.z3.tmp", "a.km", ".hidden", "c.tmp"]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in fileio.remove_stale_temps(tmp_path, "a.km")] == [".a.km.x1y2.tmp"]
    assert [p.name for p in fileio.remove_stale_temps(tmp_path)] == [".b.km.z3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "a.km", "c.tmp"]


def test_atomic_open_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with fileio.atomic_open(target) as handle:
        handle.write("done\n")
        assert not target.exists()  # invisible under its final name until complete
    assert target.read_text() == "done\n"


def test_deduplicate_round_trip():
    units = torch.tensor([3, 3, 3, 1, 1, 4, 3, 3])
    values, durations = fileio.deduplicate(units)
    assert values.tolist() == [3, 1, 4, 3] and durations.tolist() == [3, 2, 1, 2]
    assert torch.equal(values.repeat_interleave(durations), units)
    empty_values, empty_durations = fileio.deduplicate(torch.zeros(0, dtype=torch.long))
    assert empty_values.numel() == empty_durations.numel() == 0


def test_km_and_dict_formats(tmp_path):
    assert fileio.units_to_line(torch.tensor([1, 2, 2])) == "1 2 2"
    assert fileio.units_to_line(torch.tensor([], dtype=torch.long)) == ""  # an utterance with no frames: empty line
    fileio.write_km_dict(tmp_path / "dict.km.txt", 3)
    assert (tmp_path / "dict.km.txt").read_text() == "0 1\n1 1\n2 1\n"


def test_finished_files_follow_the_umask(tmp_path):
    target = tmp_path / "out.txt"
    fileio.write_text(target, "x")
    assert target.stat().st_mode & 0o777 == 0o666 & ~fileio._UMASK
