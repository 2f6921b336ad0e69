"""Distributed k-means with 2 processes over gloo, launched by torchrun, against the single-process result."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechvq.codebook import kmeans

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("codebook_size", [10, 100])  # 100: seeding and coarse Lloyd on a gathered sample
def test_torchrun_two_ranks_equal_single_process(tmp_path, codebook_size):
    out = tmp_path / "result.pt"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "tests" / "distributed_worker.py"),
            str(out),
            str(codebook_size),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = torch.load(out)
    g = torch.Generator().manual_seed(0)
    frames = torch.cat([torch.randn(3000, 6, generator=g) + 8 * torch.randn(1, 6, generator=g) for _ in range(12)])
    single = kmeans(frames, codebook_size, generator=torch.Generator().manual_seed(3), max_iter=50)
    assert distributed["iterations"] == single.num_iterations
    torch.testing.assert_close(distributed["centroids"], single.centroids, atol=1e-4, rtol=1e-5)
    assert distributed["inertia"] == pytest.approx(single.inertia, rel=1e-6)


def test_torchrun_pipeline_shards_by_rank_and_merges(dataset, tmp_path):
    """features/train/quantize under torchrun: each rank takes its shard, k-means runs across ranks, rank 0
    merges; the merged units equal a single process quantizing with the same codebook."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "dist"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "speechvq.run",
            f"data.path={dataset}",
            "data.alignments=null",
            "data.num_workers=0",
            "codebook.codebook_size=8",
            "stages=[features,train,quantize]",
            "device=cpu",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "ranks/000/train.km").exists() and (run_dir / "ranks/001/train.km").exists()
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechvq.run",
            f"data.path={dataset}",
            "data.alignments=null",
            "data.num_workers=0",
            f"codebook.path={run_dir}",
            "stages=[features,quantize]",
            "device=cpu",
            f"hydra.run.dir={tmp_path / 'one'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert (run_dir / "train.km").read_text() == (tmp_path / "one" / "train.km").read_text()
    assert len((run_dir / "train.km").read_text().splitlines()) == 6
