"""Distributed k-means with 2 processes over gloo, launched by torchrun, against the single-process result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_when, kmeans_checkpoint_meta

from speechvq import pipeline
from speechvq.codebook import kmeans
from speechvq.config import CodebookConfig, DataConfig, RunConfig

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


@pytest.mark.parametrize("store", ["all", "sample"])
def test_torchrun_pipeline_shards_by_rank_and_merges(dataset, tmp_path, store):
    """features/train/quantize under torchrun: each rank takes its shard, k-means runs across ranks, rank 0
    merges; the merged units equal a single process quantizing with the same codebook. store=sample: each rank
    stores its shard's part of the one training sample and quantizes from the audio."""
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
            f"features.store={store}",
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
    if store == "sample":  # the sample (the whole of this small corpus) split between the ranks
        stored = [json.loads((run_dir / f"ranks/00{r}/features/index.json").read_text()) for r in (0, 1)]
        assert [len(index["utterances"]) for index in stored] == [3, 3]


def _numbers_close(got, expected, path="metrics"):
    """Equal structure; floats within 1e-9 relative (sums taken in another order), everything else equal."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            _numbers_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), path
    else:
        assert got == expected, path


def test_evaluate_under_torchrun_equals_a_single_process(dataset, tmp_path):
    """Two gloo ranks each evaluate their shard; rank 0 gathers the sums and per-utterance results in dataset
    order: metrics.json (PNMI per folder, ABX, word probe, reconstruction, robustness) equals a single process's
    evaluate of the same units."""
    records_run = tmp_path / "ids"
    pipeline.run(RunConfig(data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
                           codebook=CodebookConfig(codebook_size=4, n_init=1, max_iter=5),
                           stages=["features", "train", "quantize"], device="cpu"), records_run)  # fmt: skip
    records = [json.loads(x) for x in (records_run / "units.jsonl").read_text().splitlines()]
    labels = {r["id"]: " ".join(f"p{(t // 5) % 4}" for t in range(r["num_frames"])) for r in records}
    (tmp_path / "align.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in labels.items()))
    (tmp_path / "speakers.tsv").write_text("".join(f"{r['id']}\t{r['id'].split('/')[0]}\n" for r in records))
    common = [f"data.path={dataset}", f"data.alignments={tmp_path / 'align.tsv'}", "data.num_workers=0",
              f"data.speakers={tmp_path / 'speakers.tsv'}", "codebook.codebook_size=8", "device=cpu",
              "evaluate.resynthesize=2", "evaluate.robustness.num_files=3", "evaluate.word_probe=null"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    torchrun += ["-m", "speechvq.run"]
    done = subprocess.run([*torchrun, *common, "stages=[features,train,quantize,evaluate]",
                           f"hydra.run.dir={tmp_path / 'dist'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "speechvq.run", *common, f"codebook.path={tmp_path / 'dist'}",
                             "stages=[features,quantize,evaluate]", f"hydra.run.dir={tmp_path / 'one'}"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    got = json.loads((tmp_path / "dist" / "metrics.json").read_text())
    expected = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert {"alignment", "abx", "reconstruction", "robustness"} <= set(expected)
    _numbers_close(got, expected)
    assert (tmp_path / "dist" / "report.html").exists()
    assert len(list((tmp_path / "dist" / "resynth").glob("*.wav"))) == 4  # rank 0's first 2 files, as one process


def _resume_worker(out, checkpoint):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / "tests" / "distributed_resume_worker.py"), str(out), str(checkpoint)]  # fmt: skip


def test_distributed_kmeans_killed_mid_way_resumes_to_the_same_codebook(tmp_path):
    """torchrun k-means SIGKILLed after rank 0 has checkpointed some Lloyd iterations; the rerun resumes there (all
    ranks from rank 0's state) and ends with exactly the centroids of an uninterrupted torchrun run."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    clean = subprocess.run(_resume_worker(tmp_path / "clean.pt", tmp_path / "clean.ckpt"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert clean.returncode == 0, clean.stderr[-3000:]
    checkpoint = tmp_path / "killed.ckpt"
    command = _resume_worker(tmp_path / "killed.pt", checkpoint)
    kill_when(command, lambda: kmeans_checkpoint_meta(checkpoint).get("iterations", -1) >= 3, env=env, timeout=120)
    saved = kmeans_checkpoint_meta(checkpoint)["iterations"]
    assert saved >= 3 and not (tmp_path / "killed.pt").exists()
    rerun = subprocess.run(_resume_worker(tmp_path / "killed.pt", checkpoint), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    clean_result, resumed = torch.load(tmp_path / "clean.pt"), torch.load(tmp_path / "killed.pt")
    assert resumed["resumed_after"] >= saved  # the state on disk, at least as far as seen before the kill
    assert f"distributed k-means: resumed after {resumed['resumed_after']} iterations" in rerun.stderr
    assert resumed["iterations"] == clean_result["iterations"] > resumed["resumed_after"]
    assert torch.equal(resumed["centroids"], clean_result["centroids"])


def test_hubert_iterations_under_torchrun_train_the_encoder_across_ranks(dataset, tmp_path):
    """experiment=hubert_iteration under torchrun: iteration 2's train_encoder runs data parallel (rank 0 writes the
    model and validates), then features/k-means/quantize by rank, and rank 0 writes iterations.json."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "it"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, "-m", "speechvq.run", "experiment=hubert_iteration", "iteration.count=2",
         f"iteration.train_data={dataset}", f"data.path={dataset}", "data.alignments=null", "data.num_workers=0",
         "train_encoder.steps=4", "train_encoder.batch_size=4", "train_encoder.segment_s=0.5",
         "train_encoder.warmup_steps=1", "train_encoder.checkpoint_every=2", "train_encoder.validate_every=2",
         "train_encoder.validation_fraction=0.2", "train_encoder.objective.dim=16", "train_encoder.objective.layers=1",
         "train_encoder.objective.heads=2", "codebook.codebook_size=5", "codebook.n_init=1", "device=cpu",
         f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 steps on cpu (2 process(es))" in done.stderr
    rows = json.loads((run_dir / "iterations.json").read_text())
    assert [r["iteration"] for r in rows] == [1, 2] and rows[1]["train_encoder_s"] > 0
    targets = run_dir / "iteration2/targets"
    history = json.loads((targets / "encoder/checkpoint.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4] and "val_loss" in history[-1]
    assert (targets / "loss_curve.png").exists()
    for folder in (targets, run_dir / "iteration2/units"):
        assert (folder / "ranks/000").is_dir() and (folder / "ranks/001").is_dir() and (folder / "units.jsonl").exists()
