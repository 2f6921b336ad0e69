"""Per-stage throughput on this machine, the measured inputs of docs/SCALING.md's projections.

  features   the features stage (decode + mfcc_hubert + feature store) on the bundled LibriSpeech speech
  quantize   the quantize stage (assignment + .km / JSONL writing) on those features, K=500
  lloyd      one k-means Lloyd iteration (assignment + cluster sums): 1M x 39, K=500 and 200k x 768, K=500
  assign     nearest-codeword assignment alone, same shapes

Each measurement is repeated (--repeats) and the median reported. Usage:
python scripts/measure_scaling.py [--repeats 3] [--json docs/scaling/measured_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from speechvq import pipeline
from speechvq.codebook.kmeans import lloyd
from speechvq.config import CodebookConfig, DataConfig, RunConfig
from speechvq.quantize import nearest_codewords

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stages(repeats: int) -> dict:
    data = REPO / "data" / "librispeech"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(data=DataConfig(path=str(data), alignments=None, num_workers=2),
                           codebook=CodebookConfig(codebook_size=500, n_init=1, max_iter=20), device="cpu",
                           stages=["features"])  # fmt: skip

        def features():
            shutil.rmtree(Path(tmp) / "run", ignore_errors=True)
            pipeline.run(config, Path(tmp) / "run")

        out["features_s"] = median_seconds(features, repeats)
        store_bytes = sum(p.stat().st_size for p in (Path(tmp) / "run" / "features").rglob("*") if p.is_file())
        config.stages = ["train"]
        pipeline.run(config, Path(tmp) / "run")
        config.stages = ["quantize"]
        times = []
        for index in range(repeats):  # each on a fresh copy: a finished quantize stage would be skipped
            copy = Path(tmp) / f"quantize{index}"
            shutil.copytree(Path(tmp) / "run", copy)
            start = time.perf_counter()
            pipeline.run(config, copy)
            times.append(time.perf_counter() - start)
        out["quantize_s"] = statistics.median(times)
        meta = json.loads((copy / "units.meta.json").read_text())
        km_bytes = (copy / "train.km").stat().st_size
    frames = meta["num_frames"]
    audio_s = frames / 100.0  # mfcc_hubert: 100 frames per second of audio
    out.update(audio_s=audio_s, frames=frames, feature_store_bytes=store_bytes, km_bytes=km_bytes)
    out["features_x_real_time"] = audio_s / out["features_s"]
    out["quantize_frames_per_s"] = frames / out["quantize_s"]
    return out


def kernels(repeats: int) -> dict:
    out = {}
    generator = torch.Generator().manual_seed(0)
    for label, n, dim in (("d39", 1_000_000, 39), ("d768", 200_000, 768)):
        frames = torch.randn(n, dim, generator=generator)
        centroids = frames[torch.randperm(n, generator=generator)[:500]].clone()
        assign_s = median_seconds(lambda x=frames, c=centroids: nearest_codewords(x, c), repeats)
        out[f"assign_{label}_k500_frames_per_s"] = n / assign_s
        one = median_seconds(lambda x=frames, c=centroids: lloyd(x, c, max_iter=1, tol=0.0), repeats)
        out[f"lloyd_iteration_{label}_k500_s_per_1m_frames"] = one * 1_000_000 / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    result.update(stages(args.repeats))
    result.update(kernels(args.repeats))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
