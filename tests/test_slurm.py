"""The README's sharded multirun on a real one-node SLURM cluster: scripts/slurm_local.sh installs slurm-wlm and munge
(Debian) and starts munged, slurmctld and slurmd; hydra-submitit-launcher submits one array task per shard; the merged
units equal a single-process run's byte for byte. Skipped only when the daemons cannot start here (reason printed)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, RunConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
NUM_SHARDS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    ports = {"SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(state)],
        env={**os.environ, **ports},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if started.returncode != 0:
        reason = f"the SLURM daemons could not start here: {(started.stderr or started.stdout).strip()[-600:]}"
        print(reason)
        pytest.skip(reason)
    yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PYTHONPATH": str(REPO)}
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], timeout=60)


def _speechvq(args, env, timeout=900):
    done = subprocess.run(
        [sys.executable, "-m", "speechvq.run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("store", ["all", "none"])
def test_slurm_multirun_merges_to_the_single_run(slurm_env, dataset, tmp_path, record_property, store):
    """store=none: each array task quantizes its shard straight from the audio."""
    single = tmp_path / "single"
    config = RunConfig(
        data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=20),
        device="cpu",
    )
    pipeline.run(config, single)
    sweep = tmp_path / "sweep"
    # The README's command, with this one-node cluster's resources (no GPU, 1 CPU and 2 GB per job).
    _speechvq(
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=20",
            f"hydra.sweep.dir={sweep}",
            f"data.num_shards={NUM_SHARDS}",
            f"data.shard_index=range(0,{NUM_SHARDS})",
            f"data.path={dataset}",
            "data.alignments=null",
            "data.num_workers=0",
            f"codebook.path={single}",
            f"features.store={store}",
            "stages=[features,quantize]",
            "device=cpu",
        ],
        slurm_env,
    )
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if "_" in p.name and p.is_dir())
    assert len(tasks) == NUM_SHARDS, tasks  # one SLURM array task per shard: <array job id>_<task>
    record_property("report_line", f"[test_slurm] SLURM job ids submitted: {', '.join(tasks)}")
    for task in tasks:  # each ran inside its SLURM job (submitit reads the job id from SLURM's environment)
        log = (sweep / ".submitit" / task / f"{task}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={task}," in log and "speechvq finished" in log, log[-500:]
    shown = _settled_array(tasks[0].split("_")[0], slurm_env)
    assert shown.stdout.count("JobState=COMPLETED") == NUM_SHARDS, shown.stdout + shown.stderr
    _speechvq(["stages=[merge]", f"merge.inputs={sweep}", f"hydra.run.dir={tmp_path / 'merged'}"], slurm_env)
    for name in ("train.km", "train.tsv", "units.jsonl", "units_dedup.jsonl"):
        assert (tmp_path / "merged" / name).read_bytes() == (single / name).read_bytes(), name


def _settled_array(array_id: str, env: dict, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """`scontrol show job` of the array once every task has left the running states. A task's log can say "speechvq
    finished" while slurmctld still shows it COMPLETING (slurmd reports the exit after the process ends; one CI run
    caught 3 of 4 COMPLETED), so this polls for up to timeout_s; a task that failed never settles as COMPLETED."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = subprocess.run(["scontrol", "show", "job", array_id], env=env, capture_output=True, text=True)
        states = {part.split("=", 1)[1] for part in shown.stdout.split() if part.startswith("JobState=")}
        if time.monotonic() > deadline or not states & {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}:
            return shown
        time.sleep(0.5)
