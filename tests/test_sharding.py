"""Sharded runs (fairseq's rule), merged back: identical to a single run. Also for real through Hydra's
joblib launcher."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, MergeConfig, RunConfig
from speechvq.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def config(path, **data) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=0, **data),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=20),
        device="cpu",
    )


@pytest.fixture
def single(dataset, tmp_path):
    pipeline.run(config(dataset), tmp_path / "single")
    return tmp_path / "single"


@pytest.mark.parametrize("num_shards,store", [(2, "all"), (4, "all"), (7, "all"), (4, "none")])
def test_shards_merge_to_the_single_run(dataset, tmp_path, single, num_shards, store):
    """store=none: each shard quantizes straight from its audio; the merge is the same."""
    for index in range(num_shards):
        cfg = config(dataset, num_shards=num_shards, shard_index=index)
        cfg.codebook.path, cfg.stages, cfg.features.store = str(single), ["features", "quantize"], store
        pipeline.run(cfg, tmp_path / "shards" / str(index))
    merge = RunConfig(merge=MergeConfig(inputs=str(tmp_path / "shards")), stages=["merge"], device="cpu")
    result = pipeline.run(merge, tmp_path / "merged")
    for name in ("train.km", "train.tsv", "units.jsonl", "units_dedup.jsonl"):
        assert (tmp_path / "merged" / name).read_text() == (single / name).read_text(), name
    assert result.counts == {"found": 6, "processed": 6, "skipped": 0}


def test_merge_refuses_missing_or_mixed_shards(dataset, tmp_path, single):
    for index in (0, 2):
        cfg = config(dataset, num_shards=3, shard_index=index)
        cfg.codebook.path, cfg.stages = str(single), ["features", "quantize"]
        pipeline.run(cfg, tmp_path / "shards" / str(index))
    merge = RunConfig(merge=MergeConfig(inputs=str(tmp_path / "shards")), stages=["merge"], device="cpu")
    with pytest.raises(ConfigError, match=r"shards 0\.\.2"):
        pipeline.run(merge, tmp_path / "merged")
    cfg = config(dataset, num_shards=3, shard_index=1)
    cfg.codebook.path, cfg.stages = str(single), ["features", "quantize"]
    pipeline.run(cfg, tmp_path / "shards" / "1")
    meta_path = tmp_path / "shards" / "1" / "units.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["codebook_fingerprint"] = "0" * 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="codebook_fingerprint"):
        pipeline.run(merge, tmp_path / "merged")


def test_joblib_multirun_then_merge(dataset, tmp_path, single):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechvq.run",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
            f"data.path={dataset}",
            "data.alignments=null",
            "data.num_workers=0",
            "data.num_shards=3",
            "data.shard_index=0,1,2",
            f"codebook.path={single}",
            "stages=[features,quantize]",
            "device=cpu",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    merged = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechvq.run",
            "stages=[merge]",
            f"merge.inputs={sweep}",
            f"hydra.run.dir={tmp_path / 'merged'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (tmp_path / "merged" / "train.km").read_text() == (single / "train.km").read_text()


def shard_run(dataset, single, folder, num_shards, index):
    cfg = config(dataset, num_shards=num_shards, shard_index=index)
    cfg.codebook.path, cfg.stages = str(single), ["features", "quantize"]
    pipeline.run(cfg, folder)


def merge_into(shards, out):
    return pipeline.run(RunConfig(merge=MergeConfig(inputs=str(shards)), stages=["merge"], device="cpu"), out)


def test_merged_meta_hashes_the_merged_files(dataset, tmp_path, single):
    for index in range(2):
        shard_run(dataset, single, tmp_path / "shards" / str(index), 2, index)
    merge_into(tmp_path / "shards", tmp_path / "merged")
    meta = json.loads((tmp_path / "merged" / "units.meta.json").read_text())
    assert set(meta["files"]) == {"train.km", "units.jsonl", "units_dedup.jsonl"}
    for name, record in meta["files"].items():
        assert record["sha256"] == hashlib.sha256((tmp_path / "merged" / name).read_bytes()).hexdigest(), name


def test_merge_refuses_shards_of_different_shardings(dataset, tmp_path, single):
    # 0/3 + 1/2 + 2/4: indices 0, 1, 2 look complete, but one utterance would be missing and one twice.
    for num_shards, index in ((3, 0), (2, 1), (4, 2)):
        shard_run(dataset, single, tmp_path / "shards" / f"{index}of{num_shards}", num_shards, index)
    with pytest.raises(ConfigError, match="different shardings"):
        merge_into(tmp_path / "shards", tmp_path / "merged")
    assert not (tmp_path / "merged" / "train.km").exists()


def test_merge_refuses_a_shard_given_twice(dataset, tmp_path, single):
    for name, index in (("a", 0), ("b", 1), ("c", 1)):
        shard_run(dataset, single, tmp_path / "shards" / name, 2, index)
    with pytest.raises(ConfigError, match=r"found \[0, 1, 1\]"):
        merge_into(tmp_path / "shards", tmp_path / "merged")


def test_merge_refuses_shards_of_different_datasets(dataset, tmp_path, single):
    from conftest import write_dataset

    other = tmp_path / "other"
    write_dataset(other, rates=(16000,) * 8)  # 8 utterances, not 6
    shard_run(dataset, single, tmp_path / "shards" / "0", 2, 0)
    shard_run(other, single, tmp_path / "shards" / "1", 2, 1)
    with pytest.raises(ConfigError, match="different shardings or datasets"):
        merge_into(tmp_path / "shards", tmp_path / "merged")


def test_merge_refuses_shards_whose_counts_do_not_add_up(dataset, tmp_path, single):
    for index in range(2):
        shard_run(dataset, single, tmp_path / "shards" / str(index), 2, index)
    meta_path = tmp_path / "shards" / "1" / "units.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["counts"]["found"] -= 1  # as if shard 1 had listed one utterance fewer than the dataset gives it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="shards list 5 utterances, the dataset has 6"):
        merge_into(tmp_path / "shards", tmp_path / "merged")
