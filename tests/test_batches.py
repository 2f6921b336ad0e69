"""Decoding in batches, with a weightless front end run in the decoding workers, and the feature writer that
writes its parts in the background: the features must not depend on where they were computed, a bad file in a
batch must not take its neighbours with it, and progress must never count a part that is not on disk."""

import json
import time

import numpy as np
import pytest
import soundfile
import torch
from conftest import speechlike

from speechvq import fileio
from speechvq.config import DataConfig, FeatureConfig, RunConfig
from speechvq.data import batches_by_length, check_files, iter_batches
from speechvq.errors import AudioDecodeError
from speechvq.featstore import FeatureStore, FeatureWriter
from speechvq.features import build_extractor
from speechvq.manifest import list_utterances
from speechvq.pipeline import run
from speechvq.records import FeatureMatrix, Utterance


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(3)
    for index in range(14):
        rate = 8000 if index % 5 == 4 else 16000  # some files are resampled in the worker
        samples = speechlike(float(rng.uniform(0.3, 2.0)), rate, index)
        soundfile.write(root / f"u{index:02d}.wav", samples, rate, subtype="FLOAT")
    return root


def test_batches_by_length_cover_the_listing_in_order():
    utts = [Utterance(f"u{i}", None, n) for i, n in enumerate([5, 3, 9, 1, 1, 1, 20, 2])]
    batches = batches_by_length(utts, max_samples=8)
    assert [u for batch in batches for u in batch] == utts
    assert [[u.utt_id for u in b] for b in batches] == [["u0", "u1"], ["u2"], ["u3", "u4", "u5", "u6"], ["u7"]]
    assert [len(b) for b in batches_by_length(utts, max_samples=1e9, max_items=3)] == [3, 3, 2]
    assert batches_by_length([], 8) == []


@pytest.mark.parametrize("name, workers", [("mfcc_hubert", 2), ("fbank", 2), ("mfcc", 2), ("mfcc_hubert", 1)])
def test_features_from_workers_equal_the_main_process(corpus, name, workers):
    """The front end computed in the decoding workers (the cores shared among them) gives the frames the main
    process gives for the same files, whatever the batches."""
    config = FeatureConfig(name=name)
    extractor = build_extractor(config)
    good, _ = check_files(list_utterances(corpus), "raise")
    in_main = {}
    for ids, samples in iter_batches(batches_by_length(good, 3 * 16000), 16000, 0, "raise", []):
        in_main.update(zip(ids, extractor.extract_batch(samples)))
    in_workers = {}
    batches = batches_by_length(good, 16000)
    for ids, frames in iter_batches(batches, 16000, workers, "raise", [], extractor.extract_batch):
        in_workers.update(zip(ids, frames))
    assert list(in_workers) == [u.utt_id for u in good]
    for utt_id, frames in in_workers.items():
        assert frames.shape == in_main[utt_id].shape and frames.shape[1] == extractor.dim
        torch.testing.assert_close(frames, in_main[utt_id], atol=1e-5, rtol=0)


def test_a_bad_file_in_a_batch_is_skipped_alone_or_raised(corpus):
    (corpus / "u05.wav").write_bytes(b"RIFF but not audio at all")
    utts = list_utterances(corpus)
    listed = [Utterance(u.utt_id, u.path, 16000) for u in utts]  # headers unchecked: the worker finds it
    extract = build_extractor(FeatureConfig()).extract_batch
    skipped = []
    batches = batches_by_length(listed, 1e9)  # one batch: the bad file has good neighbours in it
    got = [utt_id for ids, _ in iter_batches(batches, 16000, 1, "skip", skipped, extract) for utt_id in ids]
    assert got == [u.utt_id for u in utts if u.utt_id != "u05"]
    assert [s.utt_id for s in skipped] == ["u05"] and "not a readable audio file" in skipped[0].reason
    with pytest.raises(AudioDecodeError, match="u05.wav"):
        list(iter_batches(batches, 16000, 1, "raise", [], extract))


def test_the_stage_stores_the_same_features_with_and_without_workers(corpus, tmp_path):
    def stored(workers):
        data = DataConfig(path=str(corpus), alignments=None, num_workers=workers, batch_seconds=2, part_mb=0.02)
        folder = tmp_path / f"w{workers}"
        run(RunConfig(data=data, stages=["features"], device="cpu"), folder)
        store = FeatureStore(folder / "features")
        assert store.index["num_parts"] > 2  # several parts: the background writer was used
        return {m.utt_id: m.frames for m in store.iter_utterances()}

    with_workers, without = stored(2), stored(0)
    assert list(with_workers) == list(without) == sorted(without)
    for utt_id, frames in without.items():
        torch.testing.assert_close(with_workers[utt_id], frames, atol=1e-5, rtol=0)


def _writer(folder, part_frames=10):
    return FeatureWriter(folder, {"name": "test"}, 3, 100.0, part_bytes=part_frames * 4 * 3)


def _add(writer, utt_id, frames):
    writer.add(FeatureMatrix(utt_id, torch.full((frames, 3), float(len(writer.entries))), 100.0))


def test_progress_never_counts_a_part_that_is_not_on_disk(tmp_path, monkeypatch):
    """Writes are slowed down; at every checkpoint, what progress.json says is on disk is on disk, and the
    frames come back in order."""
    slow_write = fileio.write_bytes

    def slow(path, data):
        time.sleep(0.05)
        slow_write(path, data)

    monkeypatch.setattr("speechvq.featstore.write_bytes", slow)
    writer = _writer(tmp_path / "features")
    progress = tmp_path / "features" / "progress.json"
    for index in range(12):
        _add(writer, f"u{index}", 6)
        writer.checkpoint("key", {"consumed": index + 1})
        for _ in range(20):  # watch the writer thread at work
            if progress.exists():
                parts = json.loads(progress.read_text())["parts"]
                assert all((tmp_path / "features" / f"part-{p:05d}.safetensors").exists() for p in range(parts))
            time.sleep(0.005)
    writer.close({})
    store = FeatureStore(tmp_path / "features")
    assert [e.utt_id for e in store.utterances] == [f"u{i}" for i in range(12)]
    rows = torch.cat([frames for _, frames in store.iter_parts()])
    assert rows.shape == (72, 3)
    assert torch.equal(rows[:, 0], torch.arange(12).repeat_interleave(6).float())


def test_a_failed_part_write_surfaces_in_the_caller(tmp_path, monkeypatch):
    def failing(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("speechvq.featstore.write_bytes", failing)
    writer = _writer(tmp_path / "features")
    _add(writer, "u0", 12)
    writer.checkpoint("key", {"consumed": 1})  # handed to the writer thread
    with pytest.raises(OSError, match="No space left"):
        _add(writer, "u1", 12)
        writer.checkpoint("key", {"consumed": 2})  # waits for the first part first
    assert not (tmp_path / "features" / "progress.json").exists()
    assert not (tmp_path / "features" / "index.json").exists()
