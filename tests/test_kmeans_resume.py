"""k-means resumes mid-way: from any saved state to the same codebook, and after a real SIGKILL of the train stage
during Lloyd iterations, to a codebook file byte-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import REPO, kill_when, kmeans_checkpoint_meta, write_dataset

from speechvq import pipeline
from speechvq.codebook import kmeans
from speechvq.codebook.kmeans import KMeansState
from speechvq.codebook.kmeans_checkpoint import KMeansCheckpointFile
from speechvq.config import CodebookConfig, DataConfig, RunConfig


class Recorder:
    """Keeps every offered state; resumes from the one it is told to."""

    def __init__(self, resume: KMeansState | None = None):
        self.states: list[KMeansState] = []
        self.resume = resume

    def load(self):
        return self.resume

    def save(self, state):
        self.states.append(state)


def _frames():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 4, generator=generator) * 3
    return centres[torch.randint(12, (3000,), generator=generator)] + torch.randn(3000, 4, generator=generator)


def _fit(checkpointer=None):
    return kmeans(_frames(), 10, generator=torch.Generator().manual_seed(5), max_iter=40, tol=0.0, n_init=3,
                  checkpointer=checkpointer)  # fmt: skip


def test_every_saved_state_resumes_to_the_same_codebook(tmp_path):
    recorder = Recorder()
    reference = _fit(recorder)
    assert {state.restart for state in recorder.states} == {0, 1, 2}  # states from every restart were offered
    assert recorder.states[-1].best is not None and recorder.states[0].best is None
    for state in (recorder.states[1], recorder.states[len(recorder.states) // 2], recorder.states[-1]):
        # Through the file, as the train stage does it.
        file = KMeansCheckpointFile(tmp_path / "state.safetensors", "key", every_s=0)
        file.save(state)
        resumed = _fit(KMeansCheckpointFile(tmp_path / "state.safetensors", "key", every_s=0))
        assert torch.equal(resumed.centroids, reference.centroids)
        assert resumed.inertia == reference.inertia and resumed.inertia_history == reference.inertia_history
    # A state saved under another key (other data or settings) is not resumed: a fresh run, the same result.
    other = KMeansCheckpointFile(tmp_path / "state.safetensors", "other key", every_s=0)
    assert other.load() is None and torch.equal(_fit(other).centroids, reference.centroids)


def test_a_resumed_run_takes_the_cluster_totals_from_the_state(tmp_path):
    """The totals go through the checkpoint file bit for bit, and a resumed run continues from them rather than
    summing afresh: the same state with doubled sums gives other centroids (a resume that ignored them would not)."""
    recorder = Recorder()
    reference = _fit(recorder)
    winning = [s for s in recorder.states if reference.inertia_history[: len(s.history)] == s.history]
    state = winning[len(winning) // 2]  # a state of the restart that wins, so its totals decide the result
    assert state.totals is not None and int(state.totals.counts.sum()) == 3000
    file = KMeansCheckpointFile(tmp_path / "state.safetensors", "key", every_s=0)
    file.save(state)
    loaded = file.load().totals
    assert torch.equal(loaded.sums, state.totals.sums) and torch.equal(loaded.counts, state.totals.counts)
    doubled = replace(state, totals=replace(state.totals, sums=state.totals.sums * 2))
    assert not torch.equal(_fit(Recorder(doubled)).centroids, reference.centroids)
    assert torch.equal(_fit(Recorder(state)).centroids, reference.centroids)


def _train_command(run_dir):
    return [sys.executable, "-m", "speechvq.run", f"hydra.run.dir={run_dir}", "stages=[train]", "device=cpu",
            "data.alignments=null", "codebook.codebook_size=256", "codebook.n_init=3", "codebook.max_iter=300",
            "codebook.tol=0.0", "codebook.checkpoint_every_s=0"]  # fmt: skip


def _saved_restart(path) -> int:
    return kmeans_checkpoint_meta(path).get("restart", -1)


@pytest.mark.slow
def test_sigkill_during_lloyd_then_rerun_gives_the_same_codebook_file(tmp_path):
    corpus = tmp_path / "corpus"
    write_dataset(corpus, rates=(16000,) * 20, durations=[8.0] * 20)
    config = RunConfig(data=DataConfig(path=str(corpus), alignments=None, num_workers=0),
                       codebook=CodebookConfig(codebook_size=256, n_init=3, max_iter=300, tol=0.0),
                       stages=["features", "train"], device="cpu")  # fmt: skip
    pipeline.run(config, tmp_path / "clean")  # uninterrupted
    config.stages = ["features"]
    pipeline.run(config, tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*_train_command(tmp_path / "killed"), f"data.path={corpus}"]
    checkpoint = tmp_path / "killed" / ".speechvq" / "kmeans0.safetensors"
    kill_when(command, lambda: _saved_restart(checkpoint) >= 1, env=env)
    assert _saved_restart(checkpoint) >= 1 and not (tmp_path / "killed" / "codebook.safetensors").exists()
    final = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed after" in final.stderr
    clean, killed = tmp_path / "clean" / "codebook.safetensors", tmp_path / "killed" / "codebook.safetensors"
    assert killed.read_bytes() == clean.read_bytes()
    assert not checkpoint.exists()  # removed once the codebook is written
