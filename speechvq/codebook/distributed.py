"""k-means over frames spread across torch.distributed ranks (torchrun; gloo on CPU, NCCL on GPUs).

Each rank holds a contiguous block of the global frame array (rank order = concatenation order) and never
sends its frames anywhere, except the small uniform sample that seeding needs. Every iteration all-reduces the
per-cluster sums (float64) and counts, so all ranks hold the same centroids, and the result equals
`kmeans` on the concatenated frames up to the order of float additions."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from .kmeans import (
    Checkpointer,
    ClusterTotals,
    KMeansResult,
    KMeansState,
    LocalFrames,
    kmeans_plusplus,
    lloyd,
    sample_sizes,
)

log = logging.getLogger(__name__)


def _all_sum(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.inference_mode()
def distributed_kmeans(
    local_frames: torch.Tensor,
    codebook_size: int,
    *,
    seed: int,
    max_iter: int = 100,
    tol: float = 1e-4,
    chunk_size: int | None = None,
    checkpointer: Checkpointer | None = None,
) -> KMeansResult:
    """Same seeding and iterations as speechvq.codebook.kmeans (n_init=1) on the ranks' frames in rank order.
    checkpointer: rank 0 saves the state after Lloyd iterations and, on a rerun, every rank resumes from what
    rank 0 loads (broadcast), so a killed job ends with the codebook an uninterrupted one makes."""
    device = local_frames.device
    local_frames = local_frames.to(torch.float32).contiguous()
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([local_frames.shape[0]], device=device))
    sizes = [int(c) for c in counts]
    offset, total = sum(sizes[: dist.get_rank()]), sum(sizes)
    if total < codebook_size:
        raise ValueError(f"need at least codebook_size={codebook_size} frames to train, got {total}")
    generator = torch.Generator().manual_seed(seed)  # identical on every rank: the same global permutation
    resumed = _resumed_state(checkpointer, codebook_size, local_frames)
    totals = None
    if resumed is not None:
        centroids, history, totals = resumed
        log.info("distributed k-means: resumed after %d iterations", len(history))
    else:
        # The samples for seeding and the coarse Lloyd phase, assembled on every rank: each rank fills the rows it
        # owns and an all-reduce of zeros elsewhere puts every row in place exactly.
        seed_count, sample = sample_sizes(total, codebook_size)
        order = torch.randperm(total, generator=generator)
        gathered = _gather_rows(local_frames, order[: max(seed_count, sample if sample < total else 0)], offset)
        centroids, history = kmeans_plusplus(gathered[:seed_count], codebook_size, generator=generator), []
        if sample < total:
            centroids = lloyd(gathered[:sample], centroids, max_iter=max_iter, tol=tol, chunk_size=chunk_size).centroids

    def offer(centroids, so_far, totals):  # the state is the same on every rank; rank 0 writes it
        if dist.get_rank() == 0:
            checkpointer.save(KMeansState(0, centroids, list(so_far), generator.get_state(), None, totals))

    return lloyd(local_frames, centroids, max_iter=max_iter, tol=tol, chunk_size=chunk_size, frames_of=AllRanks(),
                 history=history, totals=totals, on_iteration=offer if checkpointer else None,
                 warm_start=sample_sizes(total, codebook_size)[1] < total)  # fmt: skip


def _resumed_state(checkpointer, codebook_size: int, local_frames: torch.Tensor):
    """(centroids, history, totals or None) of the state rank 0 loads, broadcast to every rank; None when there is
    none."""
    if checkpointer is None:
        return None
    device, dim = local_frames.device, local_frames.shape[1]
    state = checkpointer.load() if dist.get_rank() == 0 else None
    ok = state is not None and tuple(state.centroids.shape) == (codebook_size, dim)
    has_totals = ok and state.totals is not None and state.totals.sums.dtype == torch.float64
    header = torch.tensor([len(state.history) if ok else -1, int(has_totals)], device=device)
    dist.broadcast(header, src=0)
    length, has_totals = int(header[0]), bool(header[1])
    if length < 0:
        return None
    centroids = state.centroids.to(device, torch.float32) if ok else torch.empty(codebook_size, dim, device=device)
    history = torch.tensor(state.history if ok else [0.0] * length, dtype=torch.float64, device=device)
    dist.broadcast(centroids, src=0)
    dist.broadcast(history, src=0)
    if not has_totals:
        return centroids, history.tolist(), None
    if dist.get_rank() == 0:
        sums, counts = state.totals.sums.to(device), state.totals.counts.to(device)
    else:
        sums = torch.empty(codebook_size, dim, dtype=torch.float64, device=device)
        counts = torch.empty(codebook_size, dtype=torch.long, device=device)
    dist.broadcast(sums, src=0)
    dist.broadcast(counts, src=0)
    return centroids, history.tolist(), ClusterTotals(sums, counts)


class AllRanks(LocalFrames):
    """Lloyd's partial results summed over the ranks: cluster sums and counts (float64 and int64, so the sum does
    not depend on how frames are split), inertia and label changes; empty-cluster re-seeds from all ranks."""

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return _all_sum(tensor)

    def farthest(self, frames: torch.Tensor, sq_dists: torch.Tensor, count: int) -> torch.Tensor:
        return _global_farthest(frames, sq_dists, count)


def _gather_rows(local_frames: torch.Tensor, global_rows: torch.Tensor, offset: int) -> torch.Tensor:
    out = torch.zeros(global_rows.numel(), local_frames.shape[1], device=local_frames.device)
    mine = (global_rows >= offset) & (global_rows < offset + local_frames.shape[0])
    out[mine] = local_frames[(global_rows[mine] - offset).to(local_frames.device)]
    return _all_sum(out)


def _global_farthest(local_frames: torch.Tensor, sq_dists: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` frames worst served by the codebook across all ranks (re-seeds for empty clusters)."""
    take = min(count, sq_dists.numel())
    rows = torch.sort(sq_dists, descending=True, stable=True).indices[:take]  # the first of equal ones
    values = sq_dists[rows]
    padded_values = torch.full((count,), -1.0, dtype=sq_dists.dtype, device=sq_dists.device)
    padded_frames = torch.zeros(count, local_frames.shape[1], device=local_frames.device)
    padded_values[:take], padded_frames[:take] = values, local_frames[rows]
    world = dist.get_world_size()
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    all_frames = [torch.empty_like(padded_frames) for _ in range(world)]
    dist.all_gather(all_values, padded_values)
    dist.all_gather(all_frames, padded_frames)
    best = torch.sort(torch.cat(all_values), descending=True, stable=True).indices[:count]  # ranks in order
    return torch.cat(all_frames)[best]
