"""Trains a tiny masked-prediction encoder on synthetic data: one process, or each rank under torchrun (gloo).
Usage: encoder_parallel_worker.py OUT_DIR MICRO_BATCHES STEPS [MASK_PROB]; every rank writes its final weights
and history to OUT_DIR/rank<r>.safetensors / .json, rank 0 the encoder files too."""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from speechvq.config import ObjectiveConfig, TrainEncoderConfig
from speechvq.encoder.train import train_encoder_model

NUM_UNITS = 10


def data() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """16 utterances of 0.64 s (32 frames of 320 samples), each frame a tone of its unit's pitch plus noise."""
    g = torch.Generator().manual_seed(5)
    waves, labels = [], []
    t = torch.arange(320) / 16000
    for _ in range(16):
        units = torch.randint(NUM_UNITS, (32,), generator=g)
        frames = [torch.sin(2 * torch.pi * (200 + 150 * int(u)) * t) for u in units]
        waves.append(torch.cat(frames) * 0.3 + 0.01 * torch.randn(32 * 320, generator=g))
        labels.append(units)
    return waves, labels


def config(micro_batches: int, steps: int, mask_prob: float) -> TrainEncoderConfig:
    objective = ObjectiveConfig(
        name="masked_prediction", dim=32, layers=1, heads=2, proj_dim=16, mask_prob=mask_prob, mask_span=4,
        unmasked_weight=1.0,
    )  # fmt: skip
    return TrainEncoderConfig(
        objective=objective, steps=steps, batch_size=4, segment_s=1.0, learning_rate=3e-3, validation_fraction=0,
        checkpoint_every=2, micro_batches=micro_batches,
    )  # fmt: skip


def main() -> None:
    out, micro_batches, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mask_prob = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    waves, labels = data()
    torch.set_num_threads(1)
    model, history = train_encoder_model(
        config(micro_batches, steps, mask_prob), waves, out / "encoder", torch.device("cpu"), seed=1,
        labels=labels, num_units=NUM_UNITS,
    )  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(history))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
