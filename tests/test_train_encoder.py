"""The train_encoder stage: outputs, learned units in the pipeline, and resume after a real SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechvq import pipeline
from speechvq.config import (
    CodebookConfig,
    DataConfig,
    EncoderModelConfig,
    FeatureConfig,
    QuantizerConfig,
    RunConfig,
    TrainEncoderConfig,
)
from speechvq.encoder.checkpoint import optimizer_tensors, restore_optimizer

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = EncoderModelConfig(channels=8, code_dim=8, decoder_channels=8)


def tiny_config(path, quantizer: QuantizerConfig, steps=6) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=0),
        features=FeatureConfig(name="encoder"),
        codebook=CodebookConfig(name="encoder"),
        train_encoder=TrainEncoderConfig(
            model=TINY_MODEL,
            quantizer=quantizer,
            steps=steps,
            batch_size=2,
            segment_s=0.3,
            checkpoint_every=3,
            validate_every=3,
        ),
        stages=["train_encoder", "features", "quantize", "evaluate"],
        device="cpu",
    )


@pytest.mark.parametrize(
    "quantizer",
    [
        QuantizerConfig(name="vq_ema", codebook_size=8),
        QuantizerConfig(name="residual", codebook_size=4, num_codebooks=2),
    ],
    ids=["vq_ema", "residual"],
)
def test_learned_run_writes_model_units_metrics_and_curve(dataset, tmp_path, quantizer):
    run_dir = tmp_path / "run"
    result = pipeline.run(tiny_config(dataset, quantizer), run_dir)
    for name in (
        "encoder/model.safetensors",
        "encoder/model.json",
        "encoder/checkpoint.safetensors",
        "loss_curve.png",
        "units.jsonl",
        "metrics.json",
    ):
        assert (run_dir / name).exists(), name
    meta = json.loads((run_dir / "units.meta.json").read_text())
    model_meta = json.loads((run_dir / "encoder/model.json").read_text())
    assert (
        meta["codebook_fingerprint"] == model_meta["fingerprint"] and meta["num_codebooks"] == quantizer.num_codebooks
    )
    streams = ["train.km"] if quantizer.num_codebooks == 1 else ["train.q0.km", "train.q1.km"]
    records = [json.loads(x) for x in (run_dir / "units.jsonl").read_text().splitlines()]
    for stream, name in enumerate(streams):
        lines = (run_dir / name).read_text().splitlines()
        assert len(lines) == 6
        for line, record in zip(lines, records):
            units = record["units"] if len(streams) == 1 else record["units"][stream]
            assert [int(u) for u in line.split()] == units
            assert record["frame_rate_hz"] == 50.0 and len(units) == record["num_frames"]
    m = result.metrics
    assert m["bitrate_bps"] == pytest.approx(
        50.0 * quantizer.num_codebooks * torch.log2(torch.tensor(float(quantizer.codebook_size))).item()
    )
    assert m["reconstruction"]["logmel_l1"] > 0 and "unquantized" in m["reconstruction"]


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, groups = optimizer_tensors(optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    restore_optimizer(fresh, tensors, json.loads(json.dumps(groups)))
    assert fresh.param_groups[0]["lr"] == 0.1
    for a, b in zip(optimizer.state.values(), fresh.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def _cli(run_dir, dataset, steps):
    return [
        sys.executable,
        "-m",
        "speechvq.run",
        "experiment=encoder_demo",
        f"data.path={dataset}",
        "data.alignments=null",
        "data.num_workers=0",
        f"hydra.run.dir={run_dir}",
        "stages=[train_encoder]",
        f"train_encoder.steps={steps}",
        "train_encoder.batch_size=2",
        "train_encoder.segment_s=0.3",
        "train_encoder.checkpoint_every=20",
        "train_encoder.validate_every=1000",
        "train_encoder.model.channels=8",
        "train_encoder.model.decoder_channels=8",
        "train_encoder.model.code_dim=8",
        "train_encoder/quantizer=gumbel",
        "device=cpu",
    ]


def test_killed_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    steps = 160  # killed at step >= 40: the rest takes seconds more, so the kill lands mid-run
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(
        _cli(killed_dir, dataset, steps),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint_json = killed_dir / "encoder" / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint_json.exists() and json.loads(checkpoint_json.read_text())["step"] >= 40:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(checkpoint_json.read_text())["step"]
    assert 40 <= killed_at < steps and not (killed_dir / "encoder" / "model.safetensors").exists()

    resumed = subprocess.run(_cli(killed_dir, dataset, steps), cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {killed_at}" in resumed.stderr
    clean = subprocess.run(_cli(clean_dir, dataset, steps), cwd=REPO, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    a = load_file(killed_dir / "encoder" / "model.safetensors")
    b = load_file(clean_dir / "encoder" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    history = json.loads((killed_dir / "encoder" / "checkpoint.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, steps + 1))


def test_seconds_cap_names_the_files_it_leaves_out(dataset, tmp_path, caplog):
    """train_encoder.max_train_seconds stops reading audio once reached: the files after it are not trained on, and
    the log says how many (once, only an INFO line's utterance count told, and a preset lost a fifth of its data)."""
    import dataclasses
    import logging

    config = tiny_config(dataset, QuantizerConfig(name="vq_ema", codebook_size=8), steps=1)
    config.stages = ["train_encoder"]
    capped = dataclasses.replace(config, train_encoder=dataclasses.replace(config.train_encoder, max_train_seconds=2.0))
    with caplog.at_level(logging.WARNING, logger="speechvq"):
        pipeline.run(capped, tmp_path / "capped")
    warnings = [r.getMessage() for r in caplog.records if "max_train_seconds" in r.getMessage()]
    # 6 files of 0.6-1.35 s: 2 s are reached at the second or third file, whatever the listing order
    assert len(warnings) == 1 and " of 6 files of " in warnings[0], warnings
    loaded = int(warnings[0].split(" reached after ")[1].split(" of ")[0])
    assert loaded in (2, 3) and f"the other {6 - loaded} " in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechvq"):
        pipeline.run(config, tmp_path / "all")
    assert not [r for r in caplog.records if "max_train_seconds" in r.getMessage()]
