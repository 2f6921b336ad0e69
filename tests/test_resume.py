"""SIGKILL a real run during features, during train and during quantize; each restart with the same config
resumes, and the final files are byte-identical to an uninterrupted run. A different config on the same
folder is refused instead of silently mixing outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import kill_when, speechlike

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = [
    "train.km",
    "train.tsv",
    "units.jsonl",
    "units_dedup.jsonl",
    "codebook.safetensors",
    "errors.tsv",
    "dict.km.txt",
    "features/index.json",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    for index in range(150):
        soundfile.write(root / f"u{index:03d}.wav", speechlike(float(rng.uniform(0.5, 2.5)), 16000, index), 16000)
    return root


def command(corpus, run_dir):
    return [
        sys.executable,
        "-m",
        "speechvq.run",
        f"data.path={corpus}",
        "data.alignments=null",
        "data.num_workers=1",
        "data.batch_seconds=2",
        "data.part_mb=0.05",
        "codebook.codebook_size=50",
        "codebook.n_init=1",
        "codebook.max_iter=150",
        "codebook.tol=-1",
        "stages=[features,train,quantize]",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]


def markers(run_dir):
    return {p.stem for p in (run_dir / ".speechvq").glob("*.json")}


KILL_WHEN = {
    "features": lambda d: (d / "features/progress.json").exists() and not (d / "features/index.json").exists(),
    "train": lambda d: "features" in markers(d) and "train" not in markers(d),
    "quantize": lambda d: any((d / ".speechvq/units").glob("*.done")) and "quantize" not in markers(d),
}


def test_kill_during_each_stage_then_resume_byte_identical(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    done = subprocess.run(command(corpus, clean), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    logs = []
    for stage, condition in KILL_WHEN.items():
        process = subprocess.Popen(
            command(corpus, killed),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not condition(killed):
            time.sleep(0.005)
        assert process.poll() is None, f"the run finished before it could be killed during {stage}"
        os.killpg(process.pid, signal.SIGKILL)
        logs.append(process.communicate()[1])
        assert condition(killed), f"not killed during {stage}"
    final = subprocess.run(command(corpus, killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "features: resuming after" in logs[1] or "features: already done" in logs[1]
    assert "quantize: resumed" in final.stderr
    for name in OUTPUTS:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    assert not list(killed.rglob("*.tmp"))


def test_store_sample_sigkilled_in_quantize_resumes_to_the_units_of_all(corpus, tmp_path):
    """features.store=sample, SIGKILLed while quantize streams from the audio (some parts committed): the rerun
    resumes after them, and every output equals an uninterrupted store=all run's (the sample is the whole of this
    corpus, so the codebook is the same too)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    done = subprocess.run(command(corpus, clean), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sample = [*command(corpus, killed), "features.store=sample"]
    kill_when(sample, lambda: KILL_WHEN["quantize"](killed), env=env)
    final = subprocess.run(sample, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "quantize: resumed" in final.stderr
    for name in OUTPUTS[:-1]:  # not features/index.json: the sample's index says so
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name


def test_a_different_config_is_refused_unless_overwrite(dataset, tmp_path):
    def config(size):
        return RunConfig(
            data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
            codebook=CodebookConfig(codebook_size=size, n_init=1, max_iter=10),
            device="cpu",
            stages=["features", "train", "quantize"],
        )

    pipeline.run(config(4), tmp_path / "run")
    before = (tmp_path / "run" / "codebook.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="output.overwrite"):
        pipeline.run(config(5), tmp_path / "run")
    assert (tmp_path / "run" / "codebook.safetensors").read_bytes() == before
    overwrite = config(5)
    overwrite.output.overwrite = True
    pipeline.run(overwrite, tmp_path / "run")
    assert (tmp_path / "run" / "dict.km.txt").read_text().count("\n") == 5


class Interrupted(Exception):
    pass


def test_features_resume_counts_files_skipped_at_decode_time(tmp_path, monkeypatch, caplog):
    """A file that passes the header check but fails to decode (NaN samples) is skipped before the
    interruption; the resumed run must start after it, not one file early (which would store a file twice)."""
    import logging

    from speechvq.featstore import FeatureWriter

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(24):
        samples = speechlike(1.0 + 0.05 * index, 16000, index)
        if index in (3, 17):
            samples[100] = np.nan
        soundfile.write(corpus / f"u{index:03d}.wav", samples, 16000, subtype="FLOAT")

    def config():
        return RunConfig(
            data=DataConfig(
                path=str(corpus), alignments=None, num_workers=0, on_error="skip", batch_seconds=2, part_mb=0.02
            ),
            codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=10),
            device="cpu",
            stages=["features", "train", "quantize"],
        )

    pipeline.run(config(), tmp_path / "clean")
    original = FeatureWriter.checkpoint

    def interrupting(self, key, state):
        original(self, key, state)
        self.wait()  # the part just handed over is on disk, and progress.json with it
        if (self.folder / "progress.json").exists() and state["skipped"]:
            raise Interrupted  # stop right after a checkpoint that records the decode-time skip

    monkeypatch.setattr(FeatureWriter, "checkpoint", interrupting)
    with pytest.raises(Interrupted):
        pipeline.run(config(), tmp_path / "killed")
    monkeypatch.setattr(FeatureWriter, "checkpoint", original)
    caplog.set_level(logging.INFO, logger="speechvq")
    result = pipeline.run(config(), tmp_path / "killed")
    assert "features: resuming after" in caplog.text
    assert result.counts == {"found": 24, "processed": 22, "skipped": 2}
    for name in ("train.tsv", "train.km", "units.jsonl", "errors.tsv", "features/index.json", "codebook.safetensors"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert (tmp_path / "clean" / "errors.tsv").read_text().count("NaN") == 2


def corrupt_in_the_middle(path: Path, seed: int) -> None:
    """Garbage over 400 bytes mid-file: the header (and so the header check) is sound, decoding fails there."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = np.random.default_rng(seed).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_sigkill_after_decode_failures_resumes_to_the_uninterrupted_units(tmp_path):
    """FLAC files that fail while decoding (not at the header check) are skipped, the run is SIGKILLed in the
    features stage after a checkpoint that counts them, and the rerun starts after every file it consumed: stored
    or failed. Counting only the stored ones would resume as many files too early and store some of them twice."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(1)
    bad = (5, 30, 60)
    for index in range(90):
        path = corpus / f"u{index:03d}.flac"
        soundfile.write(path, speechlike(float(rng.uniform(0.5, 2.5)), 16000, index), 16000)
        if index in bad:
            corrupt_in_the_middle(path, index)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    skip = ["data.on_error=skip", "codebook.codebook_size=20", "codebook.max_iter=20"]
    done = subprocess.run([*command(corpus, clean), *skip], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split("\t")[0] for line in (clean / "errors.tsv").read_text().splitlines()[1:]] == [
        f"u{index:03d}" for index in bad
    ], "the corrupt files must fail while decoding, each once"

    def after_a_counted_skip() -> bool:  # a checkpoint on disk that records a decode failure and files after it
        try:
            state = json.loads((killed / "features/progress.json").read_text())["state"]
        except (OSError, ValueError, KeyError):
            return False
        return (
            bool(state["skipped"]) and state["consumed"] >= bad[0] + 3 and not (killed / "features/index.json").exists()
        )

    kill_when([*command(corpus, killed), *skip], after_a_counted_skip, env=env)
    rerun = subprocess.run([*command(corpus, killed), *skip], cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "features: resuming after" in rerun.stderr
    for name in ("train.km", "units.jsonl", "train.tsv", "errors.tsv", "features/index.json", "codebook.safetensors"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
