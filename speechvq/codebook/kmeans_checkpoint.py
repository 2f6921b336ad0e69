"""k-means state on disk (safetensors + JSON header, written atomically), so a killed train stage resumes
mid-way and ends with the codebook an uninterrupted run makes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from ..fileio import write_bytes
from .kmeans import ClusterTotals, KMeansResult, KMeansState


class KMeansCheckpointFile:
    """Writes the state at most every `every_s` seconds (0: after every Lloyd iteration). Only a state saved
    under the same key (the train stage's: data, features, k-means settings, seed) is resumed."""

    def __init__(self, path: Path, key: str, every_s: float):
        self.path, self.key, self.every_s = Path(path), key, every_s
        self.last_write = time.monotonic()

    def load(self) -> KMeansState | None:
        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})["speechvq"])
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # written atomically, so this is not ours: start afresh
        if meta.get("key") != self.key:
            return None
        best = None
        if "best_centroids" in tensors:
            best = KMeansResult(
                tensors["best_centroids"], meta["best_inertia"], meta["best_iterations"], meta["best_converged"],
                tensors["best_history"].tolist(),
            )  # fmt: skip
        history = tensors["history"].tolist()
        totals = ClusterTotals(tensors["sums"], tensors["counts"]) if "sums" in tensors else None
        return KMeansState(meta["restart"], tensors["centroids"], history, tensors["generator_state"], best, totals)

    def save(self, state: KMeansState) -> None:
        now = time.monotonic()
        if now - self.last_write < self.every_s:
            return
        self.last_write = now
        tensors = {
            "centroids": state.centroids.detach().cpu().contiguous(),
            "history": torch.tensor(state.history, dtype=torch.float64),
            "generator_state": state.generator_state.cpu().contiguous(),
        }
        if state.totals is not None:
            tensors.update(sums=state.totals.sums.cpu().contiguous(), counts=state.totals.counts.cpu().contiguous())
        meta = {"key": self.key, "restart": state.restart, "iterations": len(state.history)}
        if state.best is not None:
            tensors["best_centroids"] = state.best.centroids.detach().cpu().contiguous()
            tensors["best_history"] = torch.tensor(state.best.inertia_history, dtype=torch.float64)
            meta.update(best_inertia=state.best.inertia, best_iterations=state.best.num_iterations,
                        best_converged=state.best.converged)  # fmt: skip
        write_bytes(self.path, save_safetensors_bytes(tensors, metadata={"speechvq": json.dumps(meta)}))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
