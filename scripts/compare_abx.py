"""speechvq's ABX against the reference implementation, zerospeech-libriabx2 (libri-light's ABX, ZeroSpeech 2021),
on the same features and the same item file.

The item file is made from the run's alignments and speakers (triphones, as speechvq.abx.items_from_labels); the
features are the run's stored frames (MFCC for `make demo`), written as one .npy per file for the reference.
Compared: within- and across-speaker error rates, within context, angular (cosine) distance. With --max-size-group
large enough that no group is subsampled, both compute the same triples and should agree to float rounding; with
subsampling they draw different samples, and the gap is the sampling noise.

Needs the [eval] extra. Usage: python scripts/compare_abx.py [--run runs/demo] [--max-size-group 10]
    [--max-x-across 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from speechvq.abx import abx_error_rates, items_from_labels, read_speakers, write_items
from speechvq.alignments import read_alignments
from speechvq.errors import SpeechVQError
from speechvq.featstore import FeatureStore
from speechvq.ids import require_match
from speechvq.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]


def run_features(run: Path) -> tuple[dict, float]:
    store = FeatureStore(RunFolder(run).features_dir)
    return {matrix.utt_id: matrix.frames for matrix in store.iter_utterances()}, store.frame_rate_hz


def reference(features: dict, rate: float, items_path: Path, folder: Path, args) -> dict[str, float]:
    from zrc_abx2.eval_ABX import EvalABX, EvalArgs

    for utt_id, frames in features.items():
        np.save(folder / f"{utt_id.replace('/', '__')}.npy", frames.numpy())
    eval_args = EvalArgs(
        path_data=str(folder), path_item_file=str(items_path), file_extension=".npy", feature_size=1 / rate,
        speaker_mode="all", context_mode="within", distance_mode="cosine", max_size_group=args.max_size_group,
        max_x_across=args.max_x_across, seed=args.seed,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        results = EvalABX().eval_abx(eval_args)
    return {r["abx-s-condition"]: r["score"] for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--alignments", type=Path, default=REPO / "data" / "demo" / "alignments.tsv")
    parser.add_argument("--speakers", type=Path, default=REPO / "data" / "demo" / "speakers.tsv")
    parser.add_argument("--max-size-group", type=int, default=10)
    parser.add_argument("--max-x-across", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3459)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    features, rate = run_features(args.run)
    try:  # alignments that name none of the run's utterances would leave the reference nothing to compare
        labels = require_match(read_alignments(args.alignments), features, args.alignments)
        items = items_from_labels(labels, 100.0, require_match(read_speakers(args.speakers), labels, args.speakers))
    except SpeechVQError as exc:
        sys.exit(f"{type(exc).__name__}: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        items_path = Path(tmp) / "demo.item"
        write_items(items_path, [dataclasses.replace(i, file=i.file.replace("/", "__")) for i in items])
        started = time.perf_counter()
        theirs = reference(features, rate, items_path, Path(tmp), args)
        their_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = abx_error_rates(features, rate, items, "angular", args.max_size_group, args.max_x_across, args.seed)
    our_seconds = time.perf_counter() - started
    rows = {
        "within": (ours.within, theirs["within"]),
        "across": (ours.across, theirs["across"]),
    }
    print(f"{len(items)} triphone items ({ours.num_items} with frames), {args.run}, max_size_group "
          f"{args.max_size_group}, max_x_across {args.max_x_across}")  # fmt: skip
    for name, (mine, ref) in rows.items():
        print(f"  {name:<7} speechvq {100 * mine:7.3f} %   zerospeech-libriabx2 {100 * ref:7.3f} %   "
              f"difference {100 * (mine - ref):+.3f} pp")  # fmt: skip
    print(f"  time: speechvq {our_seconds:.1f} s, zerospeech-libriabx2 {their_seconds:.1f} s")
    if args.json:
        out = {name: {"speechvq": m, "zerospeech_libriabx2": r} for name, (m, r) in rows.items()}
        args.json.write_text(json.dumps({**out, "items": len(items), "max_size_group": args.max_size_group}, indent=2))


if __name__ == "__main__":
    main()
