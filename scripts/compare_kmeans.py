"""speechvq k-means vs scikit-learn MiniBatchKMeans with fairseq's HuBERT settings, on the same frames.

Features: mfcc_hubert on data/demo (or --data). Both inertias are measured the same way, on all frames.
Needs the [bench] extra (scikit-learn). Usage: python scripts/compare_kmeans.py [--data data/demo] [--k 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench import fairseq_minibatch_kmeans  # this folder is on sys.path when a script here runs

from speechvq.codebook import kmeans
from speechvq.config import FeatureConfig
from speechvq.data import iter_waveforms
from speechvq.features import build_extractor
from speechvq.manifest import list_utterances
from speechvq.quantize import nearest_codewords


def demo_features(path: str) -> torch.Tensor:
    extractor = build_extractor(FeatureConfig())
    waveforms = iter_waveforms(list_utterances(path), 16000, num_workers=2, on_error="raise", skipped=[])
    with torch.inference_mode():
        return torch.cat([extractor(w.samples) for w in waveforms])


def inertia(frames: torch.Tensor, centroids: torch.Tensor) -> float:
    _, sq = nearest_codewords(frames, torch.as_tensor(centroids, dtype=torch.float32))
    return float(sq.double().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    frames = demo_features(args.data)
    print(
        f"{frames.shape[0]} frames x {frames.shape[1]} dims from {args.data}; K={args.k}; "
        f"{torch.get_num_threads()} torch threads"
    )
    rows = []

    start = time.perf_counter()
    fit = kmeans(frames, args.k, generator=torch.Generator().manual_seed(args.seed), max_iter=100, tol=1e-4, n_init=3)
    rows.append(
        ("speechvq kmeans (k-means++, Lloyd, n_init=3)", time.perf_counter() - start, inertia(frames, fit.centroids))
    )

    start = time.perf_counter()
    mbk = fairseq_minibatch_kmeans(args.k, seed=args.seed).fit(frames.numpy())
    rows.append(
        (
            "sklearn MiniBatchKMeans, fairseq settings (n_init=20)",
            time.perf_counter() - start,
            inertia(frames, mbk.cluster_centers_),
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"{'method'.ljust(width)}  {'seconds':>8}  {'inertia (all frames)':>20}  {'vs speechvq':>11}")
    for name, seconds, value in rows:
        print(f"{name.ljust(width)}  {seconds:8.2f}  {value:20.6g}  {value / rows[0][2]:11.4f}")
    if args.json:
        args.json.write_text(json.dumps([{"method": n, "seconds": s, "inertia": i} for n, s, i in rows], indent=2))


if __name__ == "__main__":
    main()
