"""train_encoder in pieces: micro-batches in one process, data parallel ranks under torchrun (gloo), bf16 autocast,
and the BASE-size GPU preset. The reference for N ranks is one process that splits each batch into N micro-batches;
the reference for micro-batches is the whole batch at once."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, kill_when
from encoder_parallel_worker import NUM_UNITS, config, data
from safetensors.torch import load_file

from speechvq.config import Dtype, ObjectiveConfig, TrainEncoderConfig
from speechvq.encoder.train import check_parallel, train_encoder_model
from speechvq.errors import ConfigError

WORKER = [str(REPO / "tests" / "encoder_parallel_worker.py")]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *WORKER]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def train_here(tmp_path, micro_batches: int, steps: int, mask_prob: float = 0.1, **changes):
    """(final weights, history) of a run in this process."""
    settings = config(micro_batches, steps, mask_prob)
    for key, value in changes.items():
        setattr(settings, key, value)
    waves, labels = data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run: the same kernels add in the same order
    try:
        model, history = train_encoder_model(
            settings, waves, tmp_path, torch.device("cpu"), seed=1, labels=labels, num_units=NUM_UNITS
        )
    finally:
        torch.set_num_threads(threads)
    return model.state_dict(), history


def comparable(name: str, weights: torch.Tensor) -> torch.Tensor:
    """The attention key bias is left out: softmax ignores a shift, so its gradient is zero but for rounding, which
    Adam scales up to full-size steps whose sign is noise (measured: 7e-5 apart, every other weight within 2e-7)."""
    if name.endswith("self_attn.in_proj_bias"):
        dim = weights.numel() // 3
        return torch.cat([weights[:dim], weights[2 * dim :]])
    return weights


def assert_same_run(weights_a, history_a, weights_b, history_b, atol=1e-6):
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        a, b = comparable(name, weights_a[name]), comparable(name, weights_b[name])
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=name)
    assert len(history_a) == len(history_b)
    for a, b in zip(history_a, history_b):
        for key in ("loss", "grad_norm", "masked_accuracy"):  # grad_norm: Adam alone would hide a gradient scale
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)


def test_micro_batches_add_up_to_the_update_of_the_whole_batch(tmp_path):
    """Without masking (mask_prob 0, the loss on every frame) and with crops longer than every utterance, a batch
    has no random draw besides its utterances; equal-length utterances make the mean of the pieces' mean losses
    the whole batch's mean, so 2 or 4 pieces must take the whole batch's steps."""
    whole = train_here(tmp_path / "whole", 1, 4, mask_prob=0.0)
    for pieces in (2, 4):
        assert_same_run(*whole, *train_here(tmp_path / f"pieces{pieces}", pieces, 4, mask_prob=0.0))


def test_two_ranks_take_the_steps_of_one_process_in_two_micro_batches(tmp_path):
    """Masked spans and crops drawn per piece: rank r must draw what piece r draws in one process, and the summed
    gradients (and the history's figures) must be those of the whole batch."""
    done = subprocess.run([*TORCHRUN, str(tmp_path / "ranks"), "1", "6"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in (0, 1)]
    histories = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ranks[0]:  # one optimizer step on the same summed gradients: the ranks never drift apart
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    assert_same_run(ranks[0], histories[0], *train_here(tmp_path / "one", 2, 6))
    saved = load_file(str(tmp_path / "ranks" / "encoder" / "model.safetensors"))  # rank 0 wrote the model
    assert all(torch.equal(saved[name], ranks[0][name]) for name in saved)
    assert "val_loss" not in histories[1][-1]


def test_torchrun_training_killed_mid_way_resumes_to_the_same_weights(tmp_path):
    """SIGKILL every process of a 2-rank run after rank 0 has checkpointed; the rerun (both ranks from rank 0's
    checkpoint) ends with the weights of an uninterrupted run."""
    steps, out = 300, tmp_path / "killed"
    checkpoint = out / "encoder" / "checkpoint.json"

    def checkpointed() -> bool:
        try:
            return json.loads(checkpoint.read_text())["step"] >= 4
        except (OSError, ValueError):
            return False

    kill_when([*TORCHRUN, str(out), "1", str(steps)], checkpointed, env=ENV)
    killed_at = json.loads(checkpoint.read_text())["step"]
    assert 4 <= killed_at < steps and not (out / "encoder" / "model.safetensors").exists()
    done = subprocess.run([*TORCHRUN, str(out), "1", str(steps)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = load_file(str(out / "rank0.safetensors"))
    history = json.loads((out / "rank0.json").read_text())
    assert [h["step"] for h in history] == list(range(1, steps + 1))
    assert_same_run(resumed, history, *train_here(tmp_path / "clean", 2, steps))


def test_bfloat16_autocast_runs_the_forward_in_bf16_and_keeps_float32_weights(tmp_path):
    full = train_here(tmp_path / "fp32", 1, 2)
    half = train_here(tmp_path / "bf16", 1, 2, dtype=Dtype["bfloat16"])
    first_full, first_half = full[1][0]["loss"], half[1][0]["loss"]
    assert first_half == pytest.approx(first_full, rel=0.02) and first_half != first_full  # rounded, not skipped
    assert all(value.dtype == torch.float32 for value in half[0].values())
    meta = json.loads((tmp_path / "bf16" / "model.json").read_text())
    assert meta["train_encoder"]["dtype"] == "bfloat16"
    assert "dtype" not in json.loads((tmp_path / "fp32" / "model.json").read_text())["train_encoder"]
    with pytest.raises(ConfigError, match="another training config"):  # a bf16 checkpoint does not resume as fp32
        train_here(tmp_path / "bf16", 1, 3)


def test_a_batch_that_cannot_be_dealt_over_ranks_and_pieces_is_refused():
    settings = TrainEncoderConfig(objective=ObjectiveConfig(name="masked_prediction"), batch_size=8)
    assert check_parallel(settings, 1) == 1 and check_parallel(settings, 2) == 2 and check_parallel(settings, 8) == 8
    with pytest.raises(ConfigError, match="train_encoder.batch_size.*3 rank"):
        check_parallel(settings, 3)
    settings.micro_batches = 2
    assert check_parallel(settings, 4) == 8
    with pytest.raises(ConfigError, match="train_encoder.batch_size"):
        check_parallel(settings, 8)
    vqvae = TrainEncoderConfig(batch_size=8)  # reconstruction: its EMA codebook would drift apart on each rank
    assert check_parallel(vqvae, 1) == 1
    with pytest.raises(ConfigError, match="train_encoder.objective.name"):
        check_parallel(vqvae, 2)


def test_base_gpu_preset_is_hubert_base_sized_in_bf16():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import speechvq.run  # noqa: F401  (registers the schema the configs are checked against)
    from speechvq.checks import check_config
    from speechvq.encoder import OBJECTIVES

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        run = OmegaConf.to_object(compose("config", overrides=["experiment=hubert_base_gpu"]))
    check_config(run)
    train = run.train_encoder
    assert (train.objective.name, train.objective.dim, train.objective.layers, train.objective.heads) == (
        "masked_prediction", 768, 12, 12,
    )  # fmt: skip
    assert train.dtype == "bfloat16" and run.iteration.count == 2 and run.device == "cuda"
    model = OBJECTIVES.get("masked_prediction").from_config(train, 16000, 500)
    blocks = model.layers.layers
    assert len(blocks) == 12 and blocks[0].linear1.out_features == 3072  # BASE: FFN 4 x 768
    assert 85e6 < sum(p.numel() for p in model.parameters()) < 95e6  # HuBERT BASE: 95 M with its conv front end
