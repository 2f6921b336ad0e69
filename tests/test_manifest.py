import json

import pytest
import soundfile

from speechvq.errors import DatasetNotFoundError, EmptyDatasetError, ManifestError
from speechvq.manifest import list_utterances, shard


def test_folder_scan_is_recursive_sorted_and_ids_are_relative(dataset):
    utts = list_utterances(dataset)
    assert [u.utt_id for u in utts] == ["a/utt1", "a/utt3", "a/utt5", "b/utt0", "b/utt2", "b/utt4"]
    assert all(u.path.is_absolute() and u.path.exists() for u in utts)


def test_fairseq_tsv(dataset, tmp_path):
    rel = ["b/utt0.wav", "a/utt1.wav"]
    lines = [str(dataset)] + [f"{r}\t{soundfile.info(str(dataset / r)).frames}" for r in rel]
    manifest = tmp_path / "train.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    utts = list_utterances(manifest)
    assert [u.utt_id for u in utts] == ["b/utt0", "a/utt1"]  # manifest order, not sorted
    assert utts[0].num_samples == soundfile.info(str(dataset / rel[0])).frames


def test_fairseq_tsv_bad_line(tmp_path):
    manifest = tmp_path / "bad.tsv"
    manifest.write_text("/root\nfile.wav\tnot-a-number\n")
    with pytest.raises(ManifestError, match=r"bad.tsv:2"):
        list_utterances(manifest)


def test_jsonl_manifest(dataset, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "x", "path": str(dataset / "b/utt0.wav")})
        + "\n"
        + json.dumps({"path": str(dataset / "a/utt1.wav")})
        + "\n"
    )
    assert [u.utt_id for u in list_utterances(manifest)] == ["x", "corpus/a/utt1"]
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ManifestError, match="bad.jsonl:1"):
        list_utterances(tmp_path / "bad.jsonl")


def test_duplicate_ids_are_refused(dataset, tmp_path):
    manifest = tmp_path / "dup.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": "same", "path": str(p)}) + "\n" for p in sorted(dataset.rglob("*.wav"))[:2])
    )
    with pytest.raises(ManifestError, match="duplicate"):
        list_utterances(manifest)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        list_utterances(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(EmptyDatasetError, match="empty"):
        list_utterances(tmp_path / "empty")


@pytest.mark.parametrize("total,shards", [(10, 3), (7, 8), (1000, 7), (5, 1)])
def test_sharding_follows_fairseq_rule_and_partitions(total, shards):
    items = list(range(total))
    parts = [shard(items, shards, r) for r in range(shards)]
    assert sum(parts, []) == items
    for r, part in enumerate(parts):
        assert part == items[round(total * r / shards) : round(total * (r + 1) / shards)]
    with pytest.raises(ValueError):
        shard(items, shards, shards)
