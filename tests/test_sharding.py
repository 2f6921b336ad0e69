"""Sharded runs (fairseq's rule), merged back: identical to a single run. Also for real through Hydra's
joblib launcher."""

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


@pytest.mark.parametrize("num_shards", [2, 4, 7])
def test_shards_merge_to_the_single_run(dataset, tmp_path, single, num_shards):
    for index in range(num_shards):
        cfg = config(dataset, num_shards=num_shards, shard_index=index)
        cfg.codebook.path, cfg.stages = str(single), ["features", "quantize"]
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
