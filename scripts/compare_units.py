"""Units of trained encoders against MFCC k-means on the demo's aligned data (issue 10): a table and a curve.

Table (--units LABEL=FOLDER, repeatable): each FOLDER is a run whose units cover data/demo (evaluate ran with
the demo's alignments); the table reads its metrics.json: PNMI, phone purity and cluster purity on the
espeak-ng sentences and on the FSDD recordings (pocketsphinx alignments), reported separately, the cross-speaker
digit probe, bit/s, and the minutes its encoder trained (from the model the features came from).

Seeds (--seeds 1,2,3): k-means has a seed, and on these small sets it moves PNMI by up to 0.01 (FSDD: 0.04):
each table row's units are made again from its own stored features and config with each of those seeds as well
(train, quantize and evaluate only, under OUT/seed_runs/), and a second table gives every row's mean and range.

Curve (--curve LABEL=MODEL_RUN:LAYER, repeatable): every snapshot a training run kept
(train_encoder.keep_snapshots) and its final model, each through features (that layer) -> k-means K=100 ->
quantize -> evaluate on data/demo, plotted as PNMI against training minutes; the MFCC row of the table (if any)
is drawn as a reference line.

Usage:
  python scripts/compare_units.py --units "MFCC k-means=runs/demo" --units "HuBERT it2, L2=runs/hubert_units" \\
      --curve "masked_prediction=runs/hubert:2" --out docs/units
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import speechvq.run  # noqa: E402, F401  registers the config schema
from speechvq import pipeline  # noqa: E402
from speechvq.config import RunConfig  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("espeak", "fsdd")
# A curve point needs PNMI and the probe only: skip the slower robustness, ABX and resynthesis parts.
CURVE_EVALUATE = ("evaluate.robustness.num_files=0", "evaluate.abx.enabled=false", "evaluate.resynthesize=0")


def training_minutes(folder: Path) -> float | None:
    """Minutes the encoder behind the folder's features trained (0 for features without a model)."""
    config = json.loads((folder / "features/index.json").read_text())["feature_config"]
    if config["name"] != "encoder":
        return 0.0
    model = Path(config["checkpoint"])
    meta_path = model.with_suffix(".json") if model.suffix == ".safetensors" else model / "encoder/model.json"
    final = json.loads(meta_path.read_text()).get("final", {})
    return final["elapsed_s"] / 60 if "elapsed_s" in final else None


def row(label: str, folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    groups = metrics["alignment"]["groups"]
    return {
        "label": label,
        "folder": str(folder),
        **{f"{key}_{g}": groups[g][key] for g in GROUPS for key in ("pnmi", "phone_purity", "cluster_purity")},
        "word_probe": metrics.get("word_probe", {}).get("accuracy"),
        "bitrate_bps": metrics["bitrate_bps"],
        "entropy_bitrate_bps": metrics["entropy_bitrate_bps"],
        "training_min": training_minutes(folder),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| units | PNMI espeak | PNMI fsdd | phone purity espeak / fsdd | cluster purity espeak / fsdd | digit probe "
        "| bit/s (entropy) | training min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        minutes = "—" if r["training_min"] is None else f"{r['training_min']:.1f}"
        probe = "—" if r["word_probe"] is None else f"{r['word_probe']:.3f}"
        lines.append(
            f"| {r['label']} | {r['pnmi_espeak']:.3f} | {r['pnmi_fsdd']:.3f} "
            f"| {r['phone_purity_espeak']:.3f} / {r['phone_purity_fsdd']:.3f} "
            f"| {r['cluster_purity_espeak']:.3f} / {r['cluster_purity_fsdd']:.3f} | {probe} "
            f"| {r['bitrate_bps']:.0f} ({r['entropy_bitrate_bps']:.0f}) | {minutes} |"
        )
    return "\n".join(lines)


def folder_name(label: str) -> str:
    """A row's label as one folder name for its runs."""
    return label.replace(" ", "_").replace("/", "_")


def seeded_rows(label: str, folder: Path, seeds: list[int], out: Path) -> list[dict]:
    """The folder's row, then its units made again with each other k-means seed: the folder's own config (from
    .hydra/config.yaml), its stored features (linked, not copied, and never rewritten: the features stage is left
    out) and its file lists; only the seed and the slow evaluation parts differ."""
    saved = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(folder / ".hydra/config.yaml"))
    rows = [row(label, folder)]
    for seed in seeds:
        run_dir = out / "seed_runs" / folder_name(label) / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "features").exists():
            (run_dir / "features").symlink_to((folder / "features").resolve(), target_is_directory=True)
        for listing in folder.glob("*.tsv"):  # the manifest (and skipped files) the features stage wrote
            shutil.copyfile(listing, run_dir / listing.name)
        overrides = OmegaConf.from_dotlist([f"seed={seed}", "stages=[train,quantize,evaluate]", *CURVE_EVALUATE])
        pipeline.run(OmegaConf.to_object(OmegaConf.merge(saved, overrides)), run_dir)
        rows.append(row(label, run_dir))
    return rows


def spread_markdown(seeded: list[list[dict]], seeds: list[int]) -> str:
    """Mean (min-max) of PNMI per set and of the probe over each row's runs."""
    lines = [
        f"| units (k-means seed of the row and {', '.join(map(str, seeds))}) | PNMI espeak | PNMI fsdd | digit probe |",
        "|---|---|---|---|",
    ]
    for runs in seeded:
        cells = []
        for key in ("pnmi_espeak", "pnmi_fsdd", "word_probe"):
            values = [r[key] for r in runs if r[key] is not None]
            mean = sum(values) / len(values) if values else None
            cells.append("—" if mean is None else f"{mean:.4f} ({min(values):.4f}–{max(values):.4f})")
        lines.append(f"| {runs[0]['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_points(label: str, model_run: Path, layer, out: Path, every: int, normalize: str) -> list[dict]:
    """layer: an int, or a list of layers concatenated."""
    snapshots = sorted((model_run / "encoder/snapshots").glob("step*.safetensors"))
    snapshots = [s for s in snapshots if int(s.stem[len("step") :]) % every == 0]
    points = []
    layer_override = "features.layer=" + json.dumps(layer).replace(" ", "")
    for model in [*snapshots, model_run / "encoder/model.safetensors"]:
        meta = json.loads(model.with_suffix(".json").read_text())
        overrides = [
            "features=encoder", f"features.checkpoint={model.resolve()}", layer_override,
            "codebook=kmeans", "codebook.codebook_size=100", "stages=[features,train,quantize,evaluate]",
            f"features.normalize={normalize}", *CURVE_EVALUATE,
        ]  # fmt: skip
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            config = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
        run_dir = out / "curve_runs" / folder_name(label) / f"step{meta['steps']:07d}"
        pipeline.run(config, run_dir)
        points.append({"label": label, "steps": meta["steps"], **row(label, run_dir)})
        print(f"{label} step {meta['steps']}: {points[-1]['training_min']:.1f} min, PNMI espeak "
              f"{points[-1]['pnmi_espeak']:.3f}, fsdd {points[-1]['pnmi_fsdd']:.3f}", flush=True)  # fmt: skip
    return points


def plot(points: list[dict], reference: dict | None, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for axis, group in zip(axes, GROUPS):
        for label in dict.fromkeys(p["label"] for p in points):
            mine = [p for p in points if p["label"] == label]
            axis.plot([p["training_min"] for p in mine], [p[f"pnmi_{group}"] for p in mine], "o-", label=label)
        if reference:
            axis.axhline(reference[f"pnmi_{group}"], color="gray", linestyle="--", label=reference["label"])
        axis.set_title(f"{group}: PNMI of k-means K=100 units")
        axis.set_xlabel("training minutes (2 CPU cores)")
        axis.set_ylabel("PNMI")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", action="append", default=[], help="LABEL=RUN_FOLDER (a table row)")
    parser.add_argument("--curve", action="append", default=[], help="LABEL=MODEL_RUN:LAYER (2, or [0,1])")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_units"))
    parser.add_argument("--normalize", default="none", help="curve: features.normalize (none, utterance, utterance_l2)")
    parser.add_argument("--seeds", default="", help="table: also these k-means seeds for every row (e.g. 1,2,3)")
    parser.add_argument("--snapshot-every", type=int, default=1, help="curve: only snapshots at multiples of this step")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # a label may hold "=" (the folder is after the last one)
    rows = [row(label, Path(folder)) for label, folder in (spec.rsplit("=", 1) for spec in args.units)]
    table = markdown(rows)
    print(table)
    seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    seeded = []
    if seeds:
        seeded = [seeded_rows(r["label"], Path(r["folder"]), seeds, args.out) for r in rows]
        spread = spread_markdown(seeded, seeds)
        print(spread)
        table += "\n\n" + spread
    (args.out / "units_table.md").write_text(table + "\n")
    points = []
    for spec in args.curve:
        label, target = spec.split("=", 1)
        model_run, layer = target.rsplit(":", 1)
        layers = json.loads(layer)  # "2", or several concatenated: "[0,1]"
        points += curve_points(label, Path(model_run), layers, args.out, args.snapshot_every, args.normalize)
    if points:
        reference = next((r for r in rows if r["training_min"] == 0.0), None)
        plot(points, reference, args.out / "pnmi_vs_minutes.png")
    everything = {"table": rows, "seeds": seeded, "curve": points}
    (args.out / "units_comparison.json").write_text(json.dumps(everything, indent=2) + "\n")
    print(f"wrote {args.out}/units_table.md, units_comparison.json" + (", pnmi_vs_minutes.png" if points else ""))


if __name__ == "__main__":
    main()
