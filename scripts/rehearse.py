"""The scale rehearsal of docs/SCALING.md: one corpus, features.store=all against store=sample, measured.

    python scripts/rehearse.py CORPUS --label 10h --json docs/bench/raw/rehearsal_10h.json [--store all sample]
        [--runs /tmp/rehearsal] [hydra overrides ...]

Each store mode runs `python -m speechvq.run` (stages features, train, quantize; MFCC K=500, one k-means restart of
at most 20 iterations on at most 1M frames; 2 decoding workers) in a fresh run folder, while this script samples
every 0.2 s the memory of the run's whole process tree (main process and decoding workers: summed PSS from /proc, so
shared pages count once) and the bytes the run folder holds. Reported: wall time per stage (the run's own summary),
end to end, real-time factor, peak memory, peak and final disk of the run folder and of its features/. The run
folders are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = [
    "data.alignments=null",
    "data.num_workers=2",
    "codebook.codebook_size=500",
    "codebook.n_init=1",
    "codebook.max_iter=20",
    "stages=[features,train,quantize]",
    "device=cpu",
]


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of pid and all its descendants (Linux /proc): their memory, with the pages they
    share (forked decoding workers share torch's) counted once between them, not once per process as RSS does."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def corpus_seconds(corpus: Path) -> float:
    import soundfile

    return sum(soundfile.info(str(p)).duration for p in corpus.rglob("*.wav"))


def run_once(corpus: Path, run_dir: Path, store: str, overrides: list[str]) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "speechvq.run", f"data.path={corpus}", f"hydra.run.dir={run_dir}",
               f"features.store={store}", *DEFAULTS, *overrides]  # fmt: skip
    peaks = {"memory": 0, "disk": 0, "features_disk": 0}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["memory"] = max(peaks["memory"], tree_pss_bytes(process.pid))
            peaks["disk"] = max(peaks["disk"], folder_bytes(run_dir))
            peaks["features_disk"] = max(peaks["features_disk"], folder_bytes(run_dir / "features"))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    stages = {m[1]: float(m[2]) for m in re.finditer(r"time (\w+)\s+([\d.]+) s", out)}
    return {
        "store": store,
        "wall_s": round(wall, 1),
        "stage_s": stages,
        "peak_memory_mb": round(peaks["memory"] / 2**20),
        "peak_run_folder_mb": round(peaks["disk"] / 2**20, 1),
        "peak_features_mb": round(peaks["features_disk"] / 2**20, 1),
        "final_run_folder_mb": round(folder_bytes(run_dir) / 2**20, 1),
        "stored_frames": _stored_frames(run_dir),
        "unit_frames": json.loads((run_dir / "units.meta.json").read_text())["num_frames"],
        "command": " ".join(command[1:]),
    }


def _stored_frames(run_dir: Path) -> int:
    index = run_dir / "features" / "index.json"
    return json.loads(index.read_text())["num_frames"] if index.exists() else 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--label", required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--store", nargs="+", default=["all", "sample"])
    parser.add_argument("--runs", type=Path, default=Path("/tmp/rehearsal"))
    parser.add_argument("--keep", action="store_true")
    args, overrides = parser.parse_known_args()
    import torch

    seconds = corpus_seconds(args.corpus)
    result = {"label": args.label, "corpus": str(args.corpus), "audio_s": round(seconds, 1),
              "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
              "blas": "MKL" if torch.backends.mkl.is_available() else "other", "runs": []}  # fmt: skip
    for store in args.store:
        run_dir = args.runs / f"{args.label}_{store}"
        measured = run_once(args.corpus, run_dir, store, overrides)
        measured["real_time_factor"] = round(seconds / measured["wall_s"])
        result["runs"].append(measured)
        print(json.dumps(measured), flush=True)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
