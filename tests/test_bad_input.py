"""Each bad-input case: a named error naming the file under on_error=raise; under skip, the file is listed
in errors.tsv with its reason and processed + skipped = found."""

import csv

import numpy as np
import pytest
import soundfile
from conftest import speechlike

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.errors import AudioDecodeError, DatasetNotFoundError, EmptyDatasetError


def corrupt_flac_body(path):
    soundfile.write(path, speechlike(1.0, 16000, 9), 16000)
    data = bytearray(path.read_bytes())
    for i in range(200, len(data), 7):  # the header survives, the frames do not
        data[i] = (data[i] * 31 + 7) % 256
    path.write_bytes(bytes(data))


BAD_FILES = {
    "zero_length.wav": lambda p: p.write_bytes(b""),
    "text_named.wav": lambda p: p.write_text("this is not audio\n" * 20),
    "garbage.flac": lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
    "corrupt_body.flac": corrupt_flac_body,
    "no_samples.wav": lambda p: soundfile.write(p, np.zeros(0, dtype=np.float32), 16000),
    "nan_samples.wav": lambda p: soundfile.write(p, np.full(4000, np.nan, dtype=np.float32), 16000, subtype="FLOAT"),
}


def config_for(path, on_error="raise", **kw) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=0, on_error=on_error),
        codebook=CodebookConfig(codebook_size=4, n_init=1, max_iter=5),
        device="cpu",
        stages=kw.get("stages", ["features"]),
    )


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_raises_named_error_naming_the_file(dataset, tmp_path, name):
    BAD_FILES[name](dataset / name)
    with pytest.raises(AudioDecodeError) as info:
        pipeline.run(config_for(dataset), tmp_path / "run")
    assert name in str(info.value) and info.value.path.endswith(name)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_lists_every_bad_file_and_counts_add_up(dataset, tmp_path, workers):
    for name, make in BAD_FILES.items():
        make(dataset / name)
    config = config_for(dataset, on_error="skip", stages=["features", "train", "quantize"])
    config.data.num_workers = workers
    result = pipeline.run(config, tmp_path / "run")
    with open(tmp_path / "run" / "errors.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert sorted(r["utt_id"] for r in rows) == sorted(n.rsplit(".", 1)[0] for n in BAD_FILES)
    assert all(r["reason"] for r in rows)
    assert result.counts == {"found": 6 + len(BAD_FILES), "processed": 6, "skipped": len(BAD_FILES)}
    km_lines = (tmp_path / "run" / "train.km").read_text().splitlines()
    tsv_lines = (tmp_path / "run" / "train.tsv").read_text().splitlines()
    assert len(km_lines) == len(tsv_lines) - 1 == 6


def test_missing_dataset_and_empty_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        pipeline.run(config_for(tmp_path / "missing"), tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError):
        pipeline.run(config_for(tmp_path / "empty"), tmp_path / "run")


def test_all_files_bad_under_skip_is_still_an_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    BAD_FILES["zero_length.wav"](root / "zero_length.wav")
    with pytest.raises(EmptyDatasetError, match="all 1 files failed"):
        pipeline.run(config_for(root, on_error="skip"), tmp_path / "run")
    assert "zero_length" in (tmp_path / "run" / "errors.tsv").read_text()


def test_manifest_with_wrong_sample_count(dataset, tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{dataset}\nb/utt0.wav\t12345\n")
    with pytest.raises(AudioDecodeError, match="manifest says 12345"):
        pipeline.run(config_for(manifest), tmp_path / "run")
