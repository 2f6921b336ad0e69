import pytest
import torch

from speechvq import fileio


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.km"
    target.write_text("old complete content\n")
    with pytest.raises(RuntimeError), fileio.atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old complete content\n"  # the old file is untouched
    assert list(tmp_path.iterdir()) == [target]  # and no temporary file is left


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
