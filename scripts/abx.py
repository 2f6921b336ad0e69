"""ABX error rates of a folder of features (one file per utterance) against an item file or alignments.

The features are `<id>.npy` (or `.pt`, a tensor) files, (num_frames, dim), at --rate frames per second; the id is
the path relative to the folder without the extension (`espeak/s000.npy` -> `espeak/s000`). The items are a
ZeroSpeech .item file (--items), or made from frame-level phone alignments (--alignments TSV or TextGrid folder,
--alignment-rate) and a speakers TSV (--speakers), as the evaluate stage makes them.

Usage: python scripts/abx.py FEATURES_DIR --rate 50 (--items FILE | --alignments TSV --speakers TSV)
    [--distance angular] [--max-size-group 10] [--max-x-across 5] [--seed 3459]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from speechvq.abx import DISTANCES, abx_error_rates, items_from_labels, read_items, read_speakers
from speechvq.alignments import read_alignments


def load_features(folder: Path) -> dict[str, torch.Tensor]:
    features = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".npy":
            features[path.relative_to(folder).with_suffix("").as_posix()] = torch.from_numpy(np.load(path))
        elif path.suffix == ".pt":
            features[path.relative_to(folder).with_suffix("").as_posix()] = torch.load(path, weights_only=True)
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", type=Path)
    parser.add_argument("--rate", type=float, required=True, help="feature frames per second")
    parser.add_argument("--items", type=Path)
    parser.add_argument("--alignments", type=Path)
    parser.add_argument("--alignment-rate", type=float, default=100.0)
    parser.add_argument("--speakers", type=Path)
    parser.add_argument("--distance", choices=DISTANCES, default="angular")
    parser.add_argument("--max-size-group", type=int, default=10)
    parser.add_argument("--max-x-across", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3459)
    args = parser.parse_args()
    if args.items:
        items = read_items(args.items)
    elif args.alignments and args.speakers:
        labels = read_alignments(args.alignments, args.alignment_rate)
        items = items_from_labels(labels, args.alignment_rate, read_speakers(args.speakers))
    else:
        parser.error("give --items, or --alignments and --speakers")
    features = load_features(args.features)
    scores = abx_error_rates(features, args.rate, items, args.distance, args.max_size_group, args.max_x_across,
                             args.seed)  # fmt: skip
    print(json.dumps(scores.to_dict(), indent=2))


if __name__ == "__main__":
    main()
