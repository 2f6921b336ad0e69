"""One command for the issue-3 comparison on data/demo: MFCC, fbank and conv-encoder k-means against the
learned quantizers (vq_ema, residual, product, gumbel), at bitrates at or below MFCC k-means' 664 bit/s.

Each method is a normal speechvq run (under --out/<method>); the table reads their metrics.json.
Usage: python scripts/compare_quantizers.py [--out runs/compare] [--steps 2000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import speechvq.run  # noqa: F401  registers the config schema
from speechvq import pipeline

CONF = Path(__file__).resolve().parents[1] / "conf"

KMEANS = ["stages=[features,train,quantize,evaluate]", "codebook=kmeans"]
LEARNED = ["experiment=encoder_demo"]
METHODS = {
    "MFCC k-means (K=100)": KMEANS + ["features=mfcc_hubert", "codebook.codebook_size=100"],
    "fbank k-means (K=100)": KMEANS + ["features=fbank", "features.normalize=global", "codebook.codebook_size=100"],
    "vq_ema (K=256)": LEARNED + ["train_encoder/quantizer=vq_ema"],
    "conv-encoder k-means (K=256)": KMEANS
    + ["features=encoder", "codebook.codebook_size=256", "features.checkpoint={out}/vq_ema"],
    "residual (2 x 64)": LEARNED + ["train_encoder/quantizer=residual"],
    "product (2 x 64)": LEARNED + ["train_encoder/quantizer=product"],
    "gumbel (2 x 64)": LEARNED + ["train_encoder/quantizer=gumbel"],
}


def folder_name(method: str) -> str:
    return method.split(" (")[0].replace(" ", "_").replace("-", "_").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each learned quantizer")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for method, overrides in METHODS.items():
        overrides = [o.format(out=args.out.resolve()) for o in overrides] + [f"train_encoder.steps={args.steps}"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            config = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
        run_dir = args.out / folder_name(method)
        start = time.perf_counter()
        result = pipeline.run(config, run_dir)
        m = result.metrics
        rows.append(
            {
                "method": method,
                "seconds": time.perf_counter() - start,
                "frame_rate_hz": m["num_frames"] / m["duration_s"],
                "bitrate_bps": m["bitrate_bps"],
                "entropy_bitrate_bps": m["entropy_bitrate_bps"],
                "logmel_l1": m["reconstruction"]["logmel_l1"],
                "logmel_l1_unquantized": m["reconstruction"]["unquantized"]["logmel_l1"],
                "mcd_db": m["reconstruction"].get("mcd_db"),
                "pnmi": m["alignment"]["pnmi"],
                "usage": m["usage"],
            }
        )
        print(f"{method}: done in {rows[-1]['seconds']:.0f} s", flush=True)
    print("\n| method | bit/s | entropy bit/s | log-mel L1 | (unquantized) | MCD dB | PNMI | usage |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mcd = f"{r['mcd_db']:.2f}" if r["mcd_db"] is not None else "—"
        print(
            f"| {r['method']} | {r['bitrate_bps']:.0f} | {r['entropy_bitrate_bps']:.0f} | {r['logmel_l1']:.3f} | "
            f"{r['logmel_l1_unquantized']:.3f} | {mcd} | {r['pnmi']:.3f} | {r['usage']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
