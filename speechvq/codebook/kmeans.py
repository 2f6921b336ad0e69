"""k-means in torch on any device: k-means++ seeding, Lloyd iterations with chunked GEMM distances,
empty-cluster re-seeding and restarts. Randomness comes only from the generator passed in, and the
cluster sums avoid atomics, so the same seed, data and device give the same codebook."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .. import gpu_kernels
from ..quantize import check_chunk_size, check_precision, default_chunk_size, nearest_codewords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KMeansResult:
    centroids: torch.Tensor  # (codebook_size, dim) float32
    inertia: float  # sum over training frames of the squared distance to the nearest centroid
    num_iterations: int  # Lloyd iterations of the winning restart
    converged: bool
    inertia_history: list[float] = field(default_factory=list)  # per iteration, winning restart
    sample_iterations: int = 0  # Lloyd iterations on k-means' sample before the full-data ones (0: none run here)


@dataclass(frozen=True)
class ClusterTotals:
    """Per-cluster sums (codebook_size, dim) and frame counts (codebook_size,) of every frame's current label, over
    all ranks: the centroids of the next Lloyd step are sums / counts."""

    sums: torch.Tensor  # float64 (float32 for CUDA's precision="fast" without Triton)
    counts: torch.Tensor  # int64


@dataclass
class KMeansState:
    """Where k-means stands after a Lloyd iteration: enough to continue to the very same codebook."""

    restart: int  # which of the n_init restarts is running
    centroids: torch.Tensor  # that restart's centroids after len(history) Lloyd iterations
    history: list[float]  # its inertia per iteration so far
    generator_state: torch.Tensor  # the generator after the restart's seeding (the later restarts draw from it)
    best: KMeansResult | None  # the best finished restart so far
    totals: ClusterTotals | None = None  # of the labels the centroids give: a resumed run must not sum afresh


class Checkpointer(Protocol):
    def load(self) -> KMeansState | None: ...

    def save(self, state: KMeansState) -> None:
        """Called after every Lloyd iteration that does not end its restart; writes when it is due."""


@torch.inference_mode()
def kmeans(
    frames: torch.Tensor,
    codebook_size: int,
    *,
    generator: torch.Generator,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    chunk_size: int | None = None,
    progress: bool = False,
    precision: str = "exact",
    checkpointer: Checkpointer | None = None,
) -> KMeansResult:
    """Cluster frames (num_frames, dim) into codebook_size centroids; best of n_init restarts.

    precision="fast" (CUDA): TF32 GEMM labels, cluster sums by label segments in float64 (gpu_kernels.segment_sums;
    without Triton, index_add_'s atomics); "exact": fp32 GEMMs, deterministic. checkpointer: the state is offered
    after each Lloyd iteration, and a saved state is resumed from, giving the same codebook as an uninterrupted run."""
    _check_arguments(frames, codebook_size, max_iter, n_init, chunk_size, precision)
    frames = frames.to(torch.float32).contiguous()
    resumed = checkpointer.load() if checkpointer else None
    best: KMeansResult | None = resumed.best if resumed else None
    for restart in range(resumed.restart if resumed else 0, n_init):
        if resumed is not None and restart == resumed.restart:
            generator.set_state(resumed.generator_state)
            start, history, sample_iterations = resumed.centroids.to(frames.device), list(resumed.history), 0
            totals = resumed.totals
            log.info("k-means restart %d/%d: resumed after %d iterations", restart + 1, n_init, len(history))
        else:
            history, totals = [], None
            start, sample_iterations = _coarse_start(
                frames, codebook_size, generator, max_iter, tol, chunk_size, precision
            )

        def offer(centroids, so_far, totals, restart=restart, best=best):  # best: the finished restarts' winner
            checkpointer.save(KMeansState(restart, centroids, list(so_far), generator.get_state(), best, totals))

        result = lloyd(
            frames,
            start,
            max_iter=max_iter,
            tol=tol,
            chunk_size=chunk_size,
            progress=progress,
            description=f"k-means {restart + 1}/{n_init}",
            precision=precision,
            history=history,
            totals=totals,
            on_iteration=offer if checkpointer else None,
            warm_start=sample_sizes(frames.shape[0], codebook_size)[1] < frames.shape[0],  # not bool(history): a
            # resumed run must take the path the uninterrupted one took (their distances are summed differently)
        )
        result = replace(result, sample_iterations=sample_iterations)
        log.info(
            "k-means restart %d/%d: inertia %.6g after %d iterations on all frames (%d on a sample before)",
            *(restart + 1, n_init, result.inertia, result.num_iterations, sample_iterations),
        )
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def _check_arguments(frames, codebook_size: int, max_iter: int, n_init: int, chunk_size, precision: str) -> None:
    if frames.ndim != 2:
        raise ValueError(f"frames must be (num_frames, dim), got shape {tuple(frames.shape)}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if codebook_size < 1 or n_init < 1:
        raise ValueError(f"codebook_size and n_init must be at least 1, got {codebook_size} and {n_init}")
    if frames.shape[0] < codebook_size:
        raise ValueError(f"need at least codebook_size={codebook_size} frames to train, got {frames.shape[0]}")
    if precision == "tf32":
        raise ValueError("k-means precision is 'exact' or 'fast'; 'tf32' is an assignment mode")
    check_precision(precision, frames.device)
    check_chunk_size(chunk_size)


def _coarse_start(frames, codebook_size, generator, max_iter, tol, chunk_size, precision) -> tuple[torch.Tensor, int]:
    """Starting centroids for Lloyd on all frames, and the Lloyd iterations run on a sample to find them. On a large
    set, seed with k-means++ on a small uniform sample (like MiniBatchKMeans' init_size) and converge Lloyd on a
    larger one (256 frames per centroid, faiss' default sample), so the full-data iterations only polish: most of
    the work is done on the sample."""
    num_frames = frames.shape[0]
    seed_count, sample = sample_sizes(num_frames, codebook_size)
    order = torch.randperm(num_frames, generator=generator, device=generator.device).to(frames.device)
    centroids = kmeans_plusplus(frames[order[:seed_count]], codebook_size, generator=generator)
    if sample == num_frames:
        return centroids, 0
    coarse = lloyd(
        frames[order[:sample]], centroids, max_iter=max_iter, tol=tol, chunk_size=chunk_size, precision=precision
    )
    return coarse.centroids, coarse.num_iterations


def sample_sizes(num_frames: int, codebook_size: int) -> tuple[int, int]:
    """(frames for k-means++ seeding, frames for the coarse Lloyd phase); the second equals num_frames when a
    sample would save too little, and then Lloyd runs on everything from the seeds."""
    sample = min(num_frames, 256 * codebook_size)
    if 4 * sample > num_frames:
        sample = num_frames
    return min(num_frames, max(20 * codebook_size, 10_000)), sample


SEEDING_DIM = 64  # k-means++ measures the distances of wider frames in a random projection to this many dims


def kmeans_plusplus(frames: torch.Tensor, codebook_size: int, *, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii; the variant scikit-learn uses): each new centroid is the best
    of 2 + log(k) candidates drawn with probability proportional to the squared distance to the chosen ones.

    Each step sweeps all frames, so its cost is their memory. Frames wider than SEEDING_DIM are seeded in a random
    Gaussian projection to SEEDING_DIM dims (Johnson-Lindenstrauss: it keeps squared distances to a few tens of
    percent, which a draw proportional to them tolerates); the centroids are the chosen frames themselves. At
    D=768, K=500 that cut seeding 2.3 s -> 0.36 s with the same final inertia (scripts/bench.py frames, 3 seeds).
    On the CPU the steps run in one compiled loop (cpu_kernels.kmeans_plusplus_rows), elsewhere as torch ops
    (_greedy_rows); both take every step's draws from one call, so they choose the same frames."""
    space = _seeding_space(frames, generator)  # (dim, num_frames): a candidate's distances come out as one row
    num_frames, num_trials = space.shape[1], 2 + int(math.log(codebook_size))
    first = int(torch.randint(num_frames, (1,), generator=generator, device=generator.device))
    draws = torch.rand(codebook_size - 1, num_trials, generator=generator, device=generator.device, dtype=torch.float64)
    if space.device.type == "cpu":
        from .. import cpu_kernels  # lazily, as in quantize; k-means' Lloyd loads it anyway

        rows = cpu_kernels.kmeans_plusplus_rows(space, first, draws.cpu())
    else:
        rows = _greedy_rows(space, first, draws.to(space.device))
    return frames[rows].clone()  # rows are on the frames' device: space is computed from them


def _greedy_rows(space: torch.Tensor, first: int, draws: torch.Tensor) -> torch.Tensor:
    """The chosen frames' indices (int64): `first`, then per row of draws (float64 uniforms, one per candidate) the
    candidate whose potential (the sum of each frame's squared distance to its nearest chosen frame) is least."""
    frames_sq = space.square().sum(dim=0)
    chosen = torch.full((draws.shape[0] + 1,), first, dtype=torch.long, device=space.device)
    closest = _sq_dists_from(space, frames_sq, chosen[:1]).squeeze(0)  # (num_frames,)
    for step, step_draws in enumerate(draws, start=1):
        candidates = _sample_proportional(closest, step_draws)
        candidate_dists = _sq_dists_from(space, frames_sq, candidates)  # (num_trials, num_frames)
        potentials = torch.minimum(candidate_dists, closest).sum(dim=1, dtype=torch.float64)
        pick = int(potentials.argmin())
        chosen[step] = candidates[pick]
        closest = torch.minimum(closest, candidate_dists[pick])
    return chosen


def _seeding_space(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The frames as k-means++ measures them, transposed: (dim, num_frames), a random projection above SEEDING_DIM.
    Candidate-major distances from a transposed copy were 2.5x faster than frame-major ones (MKL, narrow GEMMs).
    On the CPU the projection is a float64 GEMM rounded to float32, so the BLAS kernel's own rounding (~1e-16) does
    not reach the seeding's float32 coordinates."""
    if frames.shape[1] <= 2 * SEEDING_DIM:
        return frames.T.contiguous()
    projection = torch.randn(SEEDING_DIM, frames.shape[1], generator=generator, device=generator.device)
    wide = torch.float64 if frames.device.type == "cpu" else torch.float32
    projected = projection.to(frames.device, wide) @ frames.T.to(wide) / math.sqrt(SEEDING_DIM)
    return projected.to(torch.float32)


def _sq_dists_from(space: torch.Tensor, frames_sq: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Squared distances (len(which), num_frames) from the frames `which` to all, clamped at zero against rounding."""
    points = space[:, which].T
    base = points.square().sum(dim=1, keepdim=True) + frames_sq
    return torch.addmm(base, points, space, alpha=-2.0).clamp_(min=0.0)


class LocalFrames:
    """How Lloyd combines per-process partial results: here, all frames are in this process. The distributed
    variant (codebook.distributed) all-reduces the same quantities across ranks."""

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def farthest(self, frames: torch.Tensor, sq_dists: torch.Tensor, count: int) -> torch.Tensor:
        """The `count` frames worst served by the codebook (re-seeds for empty clusters); the first of equal ones."""
        return frames[torch.sort(sq_dists, descending=True, stable=True).indices[:count]]


def lloyd(
    frames: torch.Tensor,
    centroids: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    chunk_size: int | None = None,
    progress: bool = False,
    description: str = "k-means",
    precision: str = "exact",
    frames_of: LocalFrames | None = None,
    history: list[float] | None = None,
    totals: ClusterTotals | None = None,
    on_iteration: Callable[[torch.Tensor, list[float], ClusterTotals], None] | None = None,
    warm_start: bool = False,
) -> KMeansResult:
    """Lloyd iterations from the given centroids until no label changes or the relative inertia gain drops
    below tol. frames_of: where the frames are (this process by default; all ranks under torchrun). history:
    the inertias of iterations already run (a resumed run); totals: the cluster totals of the labels these
    centroids give, as that run had them (None: summed afresh); on_iteration(centroids, history, totals) after each
    iteration that does not end the run. warm_start: the centroids are near a minimum already (k-means' coarse phase
    converged on a sample), so few labels change per step and Hamerly's bounds pay at any codebook
    size (_assignment)."""
    with _torch_bookkeeping_threads(frames.device):
        frames_of = frames_of or LocalFrames()
        codebook_size = centroids.shape[0]
        history = list(history or [])
        converged = False
        # Training tolerates a rare near-tie flip: plain TF32 is 2x the exact-label fp16 kernel at D=768 (H200).
        assign = "tf32" if precision == "fast" else "exact"
        bounded = frames.device.type == "cpu" and (warm_start or codebook_size >= BOUNDS_MIN_CODEBOOK)
        nearest = _assignment(frames, codebook_size, chunk_size, assign, bounded)
        sq_norm_total = _sq_norm_total(frames, frames_of)
        labels, _ = nearest(centroids)
        if totals is None:
            totals = _cluster_totals(frames, labels, codebook_size, precision, frames_of)
        totals = ClusterTotals(totals.sums.to(frames.device), totals.counts.to(frames.device))
        bar = tqdm(
            total=max_iter, initial=len(history), desc=description, disable=None if progress else True, leave=False
        )
        for _ in range(max_iter - len(history)):
            centroids = _centroids(frames, labels, centroids, totals, frames_of)
            new_labels, _ = nearest(centroids)
            new_totals = _relabelled(totals, frames, labels, new_labels, precision, frames_of)
            # From the totals, not the GEMM's distances (they round as the BLAS kernel does): the same on every CPU.
            inertia = inertia_from_totals(sq_norm_total, new_totals, centroids)
            bar.update(1)
            bar.set_postfix(inertia=f"{inertia:.5g}")
            changed = int(frames_of.sum((new_labels != labels).sum().reshape(1)))
            improvement = (history[-1] - inertia) / max(history[-1], 1e-30) if history else math.inf
            history.append(inertia)
            if changed == 0 or improvement < tol:
                converged = True
                break
            totals, labels = new_totals, new_labels
            if on_iteration is not None:
                on_iteration(centroids, history, totals)
        bar.close()
    return KMeansResult(centroids, history[-1], len(history), converged, history)


def _torch_bookkeeping_threads(device: torch.device):
    """On the CPU, Lloyd's torch ops between the sweeps run on one thread (cpu_kernels.torch_on_one_thread)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from .. import cpu_kernels  # lazily, as in quantize

    return cpu_kernels.torch_on_one_thread()


def _assignment(frames, codebook_size: int, chunk_size: int | None, assign: str, bounded: bool) -> Callable:
    """centroids -> (labels, squared distances) of all frames; bounded (CPU only): with Hamerly's bounds
    (codebook.bounds), the same labels without a distance GEMM for the frames that cannot have changed."""
    frames_sq = _row_sq_norms(frames)  # once per assignment method, not once per iteration
    if bounded:
        from .bounds import BoundedAssignment  # imports cpu_kernels (numba), which k-means loads anyway

        chunk_size = chunk_size or default_chunk_size(frames.device, frames.shape[1], codebook_size)
        return BoundedAssignment(frames, frames_sq, chunk_size)
    return lambda centroids: nearest_codewords(frames, centroids, chunk_size, assign, frames_sq)


# The bounds cost a pass over the frames per step and save a share of a GEMM whose cost grows with the codebook
# (scripts/bench.py frames, Lloyd from k-means++ seeds, 2-core Xeon): a loss at K <= 250 (-12 % at D=768 K=250,
# -15 % at D=39 K=100), a gain from K=500 up (+4 % at D=39, +12 % at D=768; 1.9x at D=768 K=1000). From a warm
# start they pay at K=100 too: k-means' full-data phase at D=39, 216k frames, 2-core AMD EPYC, 3 seeds: -13 to -16 %
# of the whole fit (9-23 iterations), while Lloyd from random frames lost 30 %. (Switching to the bounds once a step
# changed under 2-10 % of the labels made no difference beyond this VM's noise: not done.)
BOUNDS_MIN_CODEBOOK = 500


def _cluster_totals(frames, labels, codebook_size, precision, frames_of: LocalFrames) -> ClusterTotals:
    counts = frames_of.sum(torch.bincount(labels, minlength=codebook_size))
    if precision == "fast" and frames.is_cuda and gpu_kernels.available(frames.device):
        sums = gpu_kernels.segment_sums(frames, labels, codebook_size)
    elif precision == "fast" and frames.is_cuda:
        sums = torch.zeros(codebook_size, frames.shape[1], device=frames.device).index_add_(0, labels, frames)
    else:
        sums = _cluster_sums(frames, labels, codebook_size)
    return ClusterTotals(frames_of.sum(sums), counts)


def _relabelled(totals: ClusterTotals, frames, labels, new_labels, precision, frames_of: LocalFrames) -> ClusterTotals:
    """The totals after the frames move from `labels` to `new_labels`. On the CPU only the frames whose label changed
    are moved (after the first steps, a few percent of them) instead of a pass over all frames' values per step
    (1.9 ms of a 13-20 ms full-data step at D=39 K=100 on 216k frames, 2-core AMD EPYC). The moves are added in frame
    order, so the totals stay deterministic; they differ from a fresh sum by float64 rounding only, which is why a
    checkpoint carries them."""
    if frames.device.type != "cpu":
        return _cluster_totals(frames, new_labels, totals.counts.numel(), precision, frames_of)
    from .. import cpu_kernels  # lazily, as in quantize

    sums, counts, _ = cpu_kernels.cluster_moves(frames, labels, new_labels, totals.counts.numel())
    return ClusterTotals(totals.sums + frames_of.sum(sums), totals.counts + frames_of.sum(counts))


def _centroids(frames, labels, centroids, totals: ClusterTotals, frames_of: LocalFrames) -> torch.Tensor:
    """The means of the clusters `totals` describes; an empty cluster is re-seeded at one of the frames worst served
    by the current codebook (`centroids`, which gave `labels`), measured in float64 so that the choice does not
    follow the GEMM's rounding."""
    updated = (totals.sums / totals.counts.clamp(min=1).unsqueeze(1)).to(torch.float32)
    empty = (totals.counts == 0).nonzero().squeeze(1)
    if empty.numel():
        updated[empty] = frames_of.farthest(frames, exact_sq_dists(frames, centroids, labels), empty.numel())
        log.debug("re-seeded %d empty clusters", empty.numel())
    return updated


def inertia_from_totals(sq_norm_total: float, totals: ClusterTotals, centroids: torch.Tensor) -> float:
    """sum_i |x_i - c_(label i)|^2 from sum_i |x_i|^2 and the cluster totals of the labels (cpu_kernels)."""
    from .. import cpu_kernels  # lazily, as in quantize

    return cpu_kernels.inertia_from_totals(sq_norm_total, totals.sums, totals.counts, centroids)


def _sq_norm_total(frames: torch.Tensor, frames_of: LocalFrames) -> float:
    """sum_i |x_i|^2 over all ranks' frames in float64, the same on every CPU (on CUDA, torch's float64 sum)."""
    if frames.device.type != "cpu":
        local = sum(float(part.double().square().sum()) for part in frames.split(1 << 20))
    else:
        from .. import cpu_kernels  # lazily, as in quantize

        local = cpu_kernels.sq_norm_total(frames)
    return float(frames_of.sum(torch.tensor([local], dtype=torch.float64, device=frames.device)))


def exact_sq_dists(frames: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """|x_i - c_(label i)|^2 in float64, summed directly (on CUDA, in chunks of torch ops)."""
    if frames.device.type == "cpu":
        from .. import cpu_kernels  # lazily, as in quantize

        return cpu_kernels.exact_sq_dists(frames, centroids, labels)
    parts = [(rows.double() - centroids[part_labels].double()).square().sum(dim=1)
             for rows, part_labels in zip(frames.split(1 << 16), labels.split(1 << 16))]  # fmt: skip
    return torch.cat(parts)


def _cluster_sums(frames: torch.Tensor, labels: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-cluster sums in float64, deterministic: on the CPU added in frame order (cpu_kernels); on CUDA,
    where index_add_ uses atomics, a one-hot GEMM per chunk accumulated in float64 across chunks."""
    if frames.device.type == "cpu":
        from .. import cpu_kernels  # lazily, as in quantize

        return cpu_kernels.cluster_sums(frames, labels, codebook_size)
    sums = torch.zeros(codebook_size, frames.shape[1], dtype=torch.float64, device=frames.device)
    chunk = 65536
    for start in range(0, frames.shape[0], chunk):
        rows, row_labels = frames[start : start + chunk], labels[start : start + chunk]
        sums += (torch.nn.functional.one_hot(row_labels, codebook_size).to(frames.dtype).T @ rows).to(torch.float64)
    return sums


def _row_sq_norms(frames: torch.Tensor) -> torch.Tensor:
    if frames.device.type != "cpu":
        return frames.square().sum(dim=1)
    from .. import cpu_kernels

    return cpu_kernels.row_sq_norms(frames)


def _sample_proportional(weights: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Indices drawn with probability proportional to weights (inverse CDF of the float64 uniforms draws; no
    category limit)."""
    cdf = weights.to(torch.float64).cumsum(dim=0)
    total = cdf[-1]
    if total <= 0:  # every frame coincides with a chosen centroid: any choice is as good
        return (draws * weights.numel()).long().clamp_(max=weights.numel() - 1)
    return torch.searchsorted(cdf, draws * total, right=True).clamp_(max=weights.numel() - 1)
