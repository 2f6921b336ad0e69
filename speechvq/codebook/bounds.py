"""Lloyd's assignment step without the distance GEMM for frames whose nearest centroid cannot have changed.

Hamerly's bounds ("Making k-means even faster", SDM 2010): each frame keeps an upper bound on the distance to its
own centroid and a lower bound on the distance to every other one. When the centroids move, the lower bound drops
by the largest move of another centroid; a frame whose own distance stays below that bound, or below half the gap
from its centroid to the nearest other centroid, keeps its label. Only the other frames go through the GEMM: on
scripts/bench.py's HuBERT-like frames at K=500, a third of the frames are skipped in Lloyd's second step and 90 %
in its fifth. k-means uses it from kmeans.BOUNDS_MIN_CODEBOOK centroids, where the GEMM it saves outweighs the pass,
and after a warm start at any size.

The skip must not change a label, so the test carries a margin: a frame is skipped only when every other centroid is
farther by more than twice the rounding error of the fp32 GEMM distances (|error| <= 2 gamma_{D+3} (|x|^2 + |c|^2),
the dot-product bound with the two norms and the addition), so the full assignment would have chosen the same
centroid. Labels, and therefore the codebook, equal those of Lloyd without bounds; the squared distances are summed
directly (||x - c||^2, not the GEMM expansion) for every frame, so they do not depend on which frames were skipped
(a resumed run, which starts without bounds, gets the same numbers). The bookkeeping (moves, gaps, bounds) is in
float64, whose rounding is a billionth of that margin. CPU only: cpu_kernels has the top-2 sweep."""

from __future__ import annotations

import torch

from .. import cpu_kernels
from ..distances import gemm_gamma, largest_sq_norm


class BoundedAssignment:
    """Call with each new set of centroids: returns (labels int64, squared distances float32) of all frames."""

    def __init__(self, frames: torch.Tensor, frames_sq: torch.Tensor, chunk_size: int):
        self.frames = frames.detach().to(torch.float32).contiguous()  # no copy for k-means' own frames
        self.frames_sq, self.chunk_size = frames_sq.to(torch.float32).contiguous(), chunk_size
        self.gamma = gemm_gamma(frames.shape[1])
        self.all_rows = torch.arange(frames.shape[0])
        self.centroids: torch.Tensor | None = None
        self.labels = torch.full((frames.shape[0],), -1, dtype=torch.long)  # -1: not assigned yet
        self.lower = torch.empty(frames.shape[0], dtype=torch.float64)  # to the second nearest centroid
        self.sq_dists = torch.empty(frames.shape[0], dtype=torch.float32)  # to the own centroid, summed directly
        self.skipped = self.assigned = 0  # frames, over all calls after the first: how much the bounds saved

    def __call__(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centroids = centroids.to(torch.float32).contiguous()
        largest_sq = largest_sq_norm(centroids)  # once per step: the pass and the label update both need it
        rows = self.all_rows if self.centroids is None else self._active(centroids, largest_sq)
        self.centroids = centroids
        found, _, second_sq = cpu_kernels.nearest_two_cpu(
            self.frames, centroids, self.chunk_size, self.frames_sq, None if rows is self.all_rows else rows
        )
        cpu_kernels.take_labels(
            self.frames, centroids, self.frames_sq, rows, found, second_sq, self.gamma, largest_sq, self.labels,
            self.lower, self.sq_dists,
        )  # fmt: skip
        return self.labels.clone(), self.sq_dists.clone()

    def _active(self, centroids: torch.Tensor, largest_sq: float) -> torch.Tensor:
        """The frames whose label may change with these centroids; the bounds of the others are brought up to date."""
        moved = (centroids.double() - self.centroids.double()).norm(dim=1)
        active = cpu_kernels.bounds_pass(
            self.frames, centroids, self.labels, self.frames_sq, self.lower, _half_gap_to_nearest_other(centroids),
            _largest_move_of_another(moved), self.gamma, largest_sq, self.sq_dists,
        )  # fmt: skip
        self.skipped += self.frames.shape[0] - active.numel()
        self.assigned += self.frames.shape[0]
        return active


def _largest_move_of_another(moved: torch.Tensor) -> torch.Tensor:
    """For each centroid, the largest move of any other centroid (float64)."""
    if moved.numel() == 1:
        return torch.zeros(1, dtype=torch.float64)
    top = moved.topk(2)
    largest = torch.full_like(moved, float(top.values[0]))
    largest[top.indices[0]] = top.values[1]
    return largest


def _half_gap_to_nearest_other(centroids: torch.Tensor) -> torch.Tensor:
    """Half the distance from each centroid to its nearest other centroid (float64; inf for a single one)."""
    c = centroids.double()
    gaps = torch.cdist(c, c)
    gaps.fill_diagonal_(float("inf"))
    return gaps.min(dim=1).values / 2
