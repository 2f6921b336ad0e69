"""Corpora in the formats people hold, each read with its own library: lhotse recordings and cuts, WebDataset tar
shards, Hugging Face datasets (save_to_disk folders and parquet shards, audio as bytes or as paths). Each gives the
units of the same audio as a folder, byte for byte, and names (or skips and lists) a hostile entry of its kind."""

import io
import json
import tarfile

import datasets
import lhotse
import pytest
import webdataset
from conftest import write_dataset

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.errors import AudioDecodeError, ManifestError
from speechvq.manifest import list_utterances

OUTPUTS = ("train.km", "units.jsonl", "units_dedup.jsonl")


def config(path, on_error="raise", workers=0) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=workers, on_error=on_error),
        codebook=CodebookConfig(codebook_size=6, n_init=1, max_iter=20),
        device="cpu",
        stages=["features", "train", "quantize"],
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six files at 8-44.1 kHz, WAV and FLAC, in two subfolders; the folder run is the reference."""
    root = tmp_path_factory.mktemp("formats")
    write_dataset(root / "corpus")
    pipeline.run(config(root / "corpus"), root / "reference")
    return root


def files(folder):
    """(id, path) in the folder's listing order."""
    return [(utt.utt_id, utt.path) for utt in list_utterances(folder / "corpus")]


def same_units(run, folder):
    for name in OUTPUTS:
        assert (run / name).read_bytes() == (folder / "reference" / name).read_bytes(), name
    fingerprints = [json.loads((r / "codebook.json").read_text())["fingerprint"] for r in (run, folder / "reference")]
    assert fingerprints[0] == fingerprints[1]


# ------------------------------------------------------------------ lhotse
def test_lhotse_recordings_give_the_folders_units(folder, tmp_path):
    recordings = lhotse.RecordingSet.from_recordings(
        lhotse.Recording.from_file(path, recording_id=utt_id) for utt_id, path in files(folder)
    )
    recordings.to_file(tmp_path / "recordings.jsonl.gz")
    pipeline.run(config(tmp_path / "recordings.jsonl.gz"), tmp_path / "run")
    same_units(tmp_path / "run", folder)


def test_lhotse_cuts_are_segments_of_their_recordings(folder, tmp_path):
    """Cuts of 0.4 s windows: the units of the same segments given as a JSONL manifest (start, duration)."""
    recordings = lhotse.RecordingSet.from_recordings(
        lhotse.Recording.from_file(path, recording_id=utt_id.replace("/", "_")) for utt_id, path in files(folder)
    )
    cuts = lhotse.CutSet.from_manifests(recordings=recordings).cut_into_windows(0.4).to_eager()
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    jsonl = [{"id": c.id, "path": str(c.recording.sources[0].source), "start": c.start, "duration": c.duration}
             for c in cuts]  # fmt: skip
    (tmp_path / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
    pipeline.run(config(tmp_path / "cuts.jsonl.gz"), tmp_path / "cuts")
    pipeline.run(config(tmp_path / "segments.jsonl"), tmp_path / "segments")
    assert len(cuts) > 12
    for name in OUTPUTS:
        assert (tmp_path / "cuts" / name).read_bytes() == (tmp_path / "segments" / name).read_bytes(), name


def test_a_lhotse_cut_past_the_end_of_its_recording_is_named_or_listed(folder, tmp_path):
    (utt_id, path), *_ = files(folder)
    recording = lhotse.Recording.from_file(path, recording_id="r0")
    late = lhotse.MonoCut("late", start=recording.duration - 0.1, duration=0.5, channel=0, recording=recording)
    good = lhotse.MonoCut("good", start=0.0, duration=0.4, channel=0, recording=recording)
    lhotse.CutSet.from_cuts([good, late]).to_file(tmp_path / "cuts.jsonl.gz")
    with pytest.raises(AudioDecodeError, match="ends past the end of the file"):
        pipeline.run(config(tmp_path / "cuts.jsonl.gz"), tmp_path / "raise")
    cfg = config(tmp_path / "cuts.jsonl.gz", on_error="skip")
    cfg.codebook.codebook_size = 2
    result = pipeline.run(cfg, tmp_path / "skip")
    assert result.counts == {"found": 2, "processed": 1, "skipped": 1}
    assert (tmp_path / "skip" / "errors.tsv").read_text().splitlines()[1].startswith("late\t")


# ------------------------------------------------------------------ WebDataset
def write_shards(folder, out, extra=()):
    """Two shards, samples in the folder's order; each sample also carries a transcript member."""
    out.mkdir()
    samples = files(folder)
    for number, part in enumerate((samples[:3], samples[3:])):
        with tarfile.open(out / f"shard-{number:03d}.tar", "w") as tar:
            for utt_id, path in part:
                tar.add(path, arcname=f"{utt_id}{path.suffix}")
                text = b"a transcript"
                info = tarfile.TarInfo(f"{utt_id}.txt")
                info.size = len(text)
                tar.addfile(info, io.BytesIO(text))
            for name, data in extra if number == 1 else ():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_shards_give_the_folders_units_with_keys_as_ids(folder, tmp_path, workers):
    shards = write_shards(folder, tmp_path / "shards")
    pipeline.run(config(shards, workers=workers), tmp_path / "run")
    same_units(tmp_path / "run", folder)
    urls = [str(p) for p in sorted(shards.glob("*.tar"))]
    keys = [sample["__key__"] for sample in webdataset.WebDataset(urls, shardshuffle=False)]
    assert [utt.utt_id for utt in list_utterances(shards)] == keys  # webdataset's own keys


def test_webdataset_members_without_bytes_or_not_audio_are_named_or_listed(folder, tmp_path):
    shards = write_shards(folder, tmp_path / "shards", extra=[("empty.wav", b""), ("junk.flac", b"not audio")])
    with pytest.raises(AudioDecodeError, match=r"shard-001.tar:empty.wav.*no bytes"):
        pipeline.run(config(shards), tmp_path / "raise")
    result = pipeline.run(config(shards, on_error="skip"), tmp_path / "skip")
    assert result.counts == {"found": 8, "processed": 6, "skipped": 2}
    errors = (tmp_path / "skip" / "errors.tsv").read_text()
    assert "shard-001.tar:empty.wav" in errors and "shard-001.tar:junk.flac\tnot a readable audio file" in errors
    same_units(tmp_path / "skip", folder)


def test_a_sample_with_two_audio_members_is_a_manifest_error(folder, tmp_path):
    _, path = files(folder)[0]
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(path, arcname="k1.wav")
        tar.add(path, arcname="k1.flac")
    with pytest.raises(ManifestError, match="'k1' has two audio members"):
        list_utterances(tmp_path / "s.tar")


# ------------------------------------------------------------------ Hugging Face datasets
def hf_dataset(folder, as_paths=False, corrupt_row=None, missing=None) -> datasets.Dataset:
    """The folder's files as a dataset; corrupt_row: bytes that are not audio; missing: (row, a path to put there)."""
    rows = {"id": [], "audio": []}
    for row, (utt_id, path) in enumerate(files(folder)):
        data = b"RIFF not really audio" if row == corrupt_row else path.read_bytes()
        rows["id"].append(utt_id)
        rows["audio"].append({"bytes": None, "path": str(path)} if as_paths else {"bytes": data, "path": path.name})
        if missing and row == missing[0]:
            rows["audio"][-1] = {"bytes": None, "path": str(missing[1])}
    # made as the plain struct an Audio column stores, then cast to Audio: encoding through datasets.Audio would need
    # torchcodec; the stored table (and its "huggingface" feature metadata) is the same
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"id": datasets.Value("string"), "audio": struct})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    return dataset.cast_column("audio", datasets.Audio(decode=False))


@pytest.mark.parametrize("as_paths", [False, True])
def test_a_saved_dataset_gives_the_folders_units(folder, tmp_path, as_paths):
    hf_dataset(folder, as_paths).save_to_disk(str(tmp_path / "saved"))
    pipeline.run(config(tmp_path / "saved", workers=2), tmp_path / "run")
    same_units(tmp_path / "run", folder)


def test_parquet_shards_give_the_folders_units(folder, tmp_path):
    dataset = hf_dataset(folder)
    (tmp_path / "parquet").mkdir()
    for number in range(2):
        dataset.shard(2, number, contiguous=True).to_parquet(str(tmp_path / "parquet" / f"train-{number:05d}.parquet"))
    pipeline.run(config(tmp_path / "parquet"), tmp_path / "run")
    same_units(tmp_path / "run", folder)


def test_a_dataset_row_that_is_not_audio_is_named_or_listed(folder, tmp_path):
    hf_dataset(folder, corrupt_row=2).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(AudioDecodeError, match=r"train.parquet:2: not a readable audio file"):
        pipeline.run(config(tmp_path / "train.parquet"), tmp_path / "raise")
    result = pipeline.run(config(tmp_path / "train.parquet", on_error="skip"), tmp_path / "skip")
    assert result.counts == {"found": 6, "processed": 5, "skipped": 1}
    assert files(folder)[2][0] + "\t" in (tmp_path / "skip" / "errors.tsv").read_text()


def test_a_dataset_without_an_audio_column_is_a_manifest_error(tmp_path):
    datasets.Dataset.from_dict({"id": ["a"], "text": ["hello"]}).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ManifestError, match="no 'audio' column"):
        list_utterances(tmp_path / "t.parquet")


def test_a_dataset_row_without_bytes_whose_path_is_missing_is_named_or_listed(folder, tmp_path):
    gone = tmp_path / "gone.wav"
    gone.write_bytes(b"")  # there when the dataset is saved (save_to_disk sizes the files), gone when it is read
    hf_dataset(folder, as_paths=True, missing=(4, gone)).save_to_disk(str(tmp_path / "saved"))
    gone.unlink()
    with pytest.raises(AudioDecodeError, match=r"saved:4: cannot read it from its container \(FileNotFoundError"):
        pipeline.run(config(tmp_path / "saved"), tmp_path / "raise")
    result = pipeline.run(config(tmp_path / "saved", on_error="skip"), tmp_path / "skip")
    assert result.counts == {"found": 6, "processed": 5, "skipped": 1}
