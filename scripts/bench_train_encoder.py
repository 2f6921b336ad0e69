"""train_encoder speed at BASE size (train_encoder=base: 12 x 768 masked prediction): optimizer steps per second and
seconds of audio per second, fp32 against bf16 autocast, interleaved and repeated (median and range), plus the peak
GPU memory and how far bf16's first-step loss is from fp32's (same weights, same batch).

On the bundled LibriSpeech utterances (real read speech) with random target units (speed does not depend on them).
--small swaps in a 2 x 64 model and 2 s crops, to try the script on a CPU.

Usage: python scripts/bench_train_encoder.py [--device cuda] [--steps 10] [--repeats 3] [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch
from bench_ssl import load_speech, machine

from speechvq.config import Dtype, ObjectiveConfig, TrainEncoderConfig
from speechvq.encoder.train import train_encoder_model

NUM_UNITS = 500


def base_config(args) -> TrainEncoderConfig:
    """The train_encoder=base preset's model and batch (conf/train_encoder/base.yaml), or --small's."""
    if args.small:
        objective = ObjectiveConfig(name="masked_prediction", dim=64, layers=2, heads=4)
        return TrainEncoderConfig(objective=objective, batch_size=args.batch, segment_s=2.0, validation_fraction=0)
    objective = ObjectiveConfig(name="masked_prediction", dim=768, layers=12, heads=12, proj_dim=256)
    return TrainEncoderConfig(
        objective=objective, batch_size=args.batch, segment_s=8.0, learning_rate=5e-4, grad_clip=10.0,
        validation_fraction=0,
    )  # fmt: skip


def timed_run(config: TrainEncoderConfig, waves, labels, device, out: Path) -> tuple[float, list[dict]]:
    """Seconds per step over config.steps steps, after one warm-up step that is not counted."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    _, history = train_encoder_model(config, waves, out, device, seed=0, labels=labels, num_units=NUM_UNITS)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = history[-1]["elapsed_s"] - history[0]["elapsed_s"]
    return elapsed / max(len(history) - 1, 1), history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    waves, seconds = load_speech(10.0)
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(NUM_UNITS, (w.numel() // 320,), generator=g) for w in waves]
    config = dataclasses.replace(base_config(args), steps=args.steps + 1, checkpoint_every=10**9)
    runs: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    first_loss: dict[str, float] = {}
    peak: dict[str, float] = {}
    for _ in range(args.repeats):
        for dtype in runs:  # interleaved
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with tempfile.TemporaryDirectory() as out:
                per_step, history = timed_run(
                    dataclasses.replace(config, dtype=Dtype[dtype]), waves, labels, device, Path(out)
                )
            runs[dtype].append(per_step)
            first_loss[dtype] = history[0]["loss"]
            if device.type == "cuda":
                peak[dtype] = torch.cuda.max_memory_allocated(device) / 2**30
    audio_per_step = config.batch_size * config.segment_s
    result = {"machine": machine(device), "batch_size": config.batch_size, "segment_s": config.segment_s, "rows": {}}
    for dtype, times in runs.items():
        median = statistics.median(times)
        result["rows"][dtype] = {
            "s_per_step_median": median, "s_per_step_range": [min(times), max(times)],
            "steps_per_s": 1 / median, "audio_s_per_s": audio_per_step / median,
            "peak_gib": peak.get(dtype), "first_loss": first_loss[dtype],
        }  # fmt: skip
        print(f"{dtype:>9}: {median * 1000:8.1f} ms/step ({min(times) * 1000:.1f}-{max(times) * 1000:.1f}), "
              f"{audio_per_step / median:8.1f} s of audio/s, first loss {first_loss[dtype]:.4f}"
              + (f", peak {peak[dtype]:.1f} GiB" if dtype in peak else ""))  # fmt: skip
    speedup = statistics.median(runs["float32"]) / statistics.median(runs["bfloat16"])
    result["bf16_speedup"] = speedup
    print(f"{result['machine']}\nbf16 / fp32 speed: {speedup:.2f}x; {len(waves)} utterances, {seconds / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
