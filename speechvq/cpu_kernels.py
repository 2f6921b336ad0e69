"""Nearest-codeword search on the CPU at close to the speed of the distance GEMM itself.

torch's row-wise `min(dim=1)` with indices is a scalar loop in ATen: at K=100 it took longer than the GEMM that made
the distances (amin, without indices, is vectorized, but the index is what we need). So a GEMM writes each chunk's
dot products c.x codeword-major, (K, frames), and a small numba kernel sweeps the K rows of |c|^2 - 2 c.x keeping a
running best, second best and index per frame. Its inner loop runs over contiguous frames with branch-free selects,
which LLVM turns into SIMD compares and blends; four codeword rows per sweep cut the loads and stores of the running
values by four. Strict `<` keeps the first of equal distances, as torch.argmin does. numba comes with librosa.

One worker per torch thread takes chunk after chunk and does all of a chunk's work (gather, norms, GEMM, sweep,
re-rank) while the chunk is in its core's cache; the GEMM is numpy's BLAS held to one thread per worker. On the
2-core AMD EPYC that made the search 1.75x faiss at D=39 K=100 and 1.02-1.13x at D=768 K=500, from about 1.0x and
0.89-0.97x with torch's MKL running the GEMM on both threads and the sweep on one: OpenBLAS' sgemm ran 7-13 % faster
than MKL's there, and independent workers need no fork-join per GEMM (scripts/bench.py).

Labels are the float64 argmin's: the fp32 expansion rounds by up to 2 gamma_{D+3} (|x|^2 + |c|^2) per distance
(distances.gemm_gamma), more than some frames' gap between their two nearest centroids when the norms are large (MFCC
c0 is in the hundreds; on the bench's D=768 frames 1 in 100,000 labels differed on the AMD EPYC's MKL). A frame whose
two best GEMM distances are within twice that bound is re-ranked over the centroids within it by directly summed
float64 distances. The second best costs the sweep 5-40 % more (56 vs 40 us per 4,096 frames at K=100), a few
percent of the GEMM's time at D=39 and under 1 % at D=768; the re-ranking touches a handful of frames.

numba's import and first call cost about a second per process (LLVM starts, the cached machine code is loaded),
so this module is imported lazily: by k-means, which makes many passes, and by nearest_codewords once a process has
asked for enough distances to pay for it (quantize.CPU_KERNELS_MIN_DISTANCES). torch's path (distances.gemm_nearest)
re-ranks the same near ties, so both give the float64 argmin and the labels do not depend on the path; the returned
distances may differ in their last bits (the frame norms are summed in another order: torch's square().sum(dim=1)
took 5x longer at D=768).
(A start-up in a background thread was tried: a DataLoader worker forked while it ran deadlocked.)"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numba.extending
import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from .distances import gemm_gamma


def _compiled(**options):
    """numba.njit with its on-disk cache where there is somewhere to write it (the package's __pycache__ or the
    user's cache folder); a read-only install without a home compiles once per process instead of failing."""

    def wrap(func):
        try:
            return numba.njit(nogil=True, boundscheck=False, cache=True, **options)(func)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, boundscheck=False, **options)(func)

    return wrap


@numba.extending.intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (IEEE 754 fusedMultiplyAdd), for kernels without fastmath: the same bits on every CPU,
    at the speed of the FMA instruction where the CPU has one (LLVM calls a correctly rounded fma elsewhere), where
    fastmath's `contract` would leave it to the compiler which products to fuse."""
    if not (isinstance(a, numba.types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@_compiled()
def _running_top2(dists, offsets, best, second, index):  # pragma: no cover - compiled; tested through nearest_two_cpu
    """dists (K, n) float32 C-contiguous, the dot products c.x, each row to be taken as offset - 2 c.x with its
    offset (K,) float32 (|c|^2; doubling is exact, so each value is rounded once, as in a GEMM's beta=1 update);
    writes best (n,) float32, the smallest value of each column, index (n,) int32, the first row that holds it, and
    second (n,), the smallest value other than the one at index (equal to best on a tie; inf with one row). Four
    rows per sweep cut the loads and stores of the running values by four."""
    num_rows, n = dists.shape
    two = np.float32(2.0)
    for col in range(n):
        best[col], second[col], index[col] = offsets[0] - two * dists[0, col], np.inf, 0
    row = 1
    while row + 4 <= num_rows:
        row0, row1, row2, row3 = dists[row], dists[row + 1], dists[row + 2], dists[row + 3]
        o0, o1, o2, o3 = offsets[row], offsets[row + 1], offsets[row + 2], offsets[row + 3]
        k0, k1, k2, k3 = np.int32(row), np.int32(row + 1), np.int32(row + 2), np.int32(row + 3)
        for col in range(n):
            b, s, i = best[col], second[col], index[col]
            v = o0 - two * row0[col]
            take = v < b
            s, b, i = (b if take else min(s, v)), (v if take else b), (k0 if take else i)
            v = o1 - two * row1[col]
            take = v < b
            s, b, i = (b if take else min(s, v)), (v if take else b), (k1 if take else i)
            v = o2 - two * row2[col]
            take = v < b
            s, b, i = (b if take else min(s, v)), (v if take else b), (k2 if take else i)
            v = o3 - two * row3[col]
            take = v < b
            second[col], best[col], index[col] = (b if take else min(s, v)), (v if take else b), (k3 if take else i)
        row += 4
    while row < num_rows:
        values, offset, k = dists[row], offsets[row], np.int32(row)
        for col in range(n):
            v, b = offset - two * values[col], best[col]
            take = v < b
            second[col] = b if take else min(second[col], v)
            best[col], index[col] = (v if take else b), (k if take else index[col])
        row += 1


@_compiled()
def _nearest_two_in_chunk(
    dists, centroid_sq, frames, centroids, frames_sq, gamma, largest_sq, sq_dists, second_sq, indices, index32
):  # pragma: no cover - compiled
    """The nearest centroid of each frame (n, D) by the partial distances |c|^2 - 2 x.c, from the dot products dists
    (K, n) and centroid_sq (K,): its index into indices (n,) int64 and its squared distance into sq_dists, the
    second smallest into second_sq (both with frames_sq added, clamped at zero against rounding). Where the two
    smallest are closer than the GEMM's rounding can blur (4 gamma (|x|^2 + max|c|^2), twice the bound on one
    distance's error), the fp32 order proves nothing: such a frame takes the float64 argmin of the directly summed
    distances to every centroid within that bound of the smallest (its sq_dists the winner's, its second_sq the
    smallest GEMM distance, a safe lower bound on every other). So labels are the float64 argmin's, ties to the
    first centroid. Returns how many were re-ranked."""
    _running_top2(dists, centroid_sq, sq_dists, second_sq, index32)
    near, limits = np.empty(sq_dists.shape[0], dtype=np.int32), np.empty(sq_dists.shape[0], dtype=np.float64)
    count = 0
    for col in range(sq_dists.shape[0]):
        best, second, norm = np.float64(sq_dists[col]), np.float64(second_sq[col]), frames_sq[col]
        sq_dists[col] = max(sq_dists[col] + norm, np.float32(0.0))
        second_sq[col] = max(second_sq[col] + norm, np.float32(0.0))
        margin = 4 * gamma * (np.float64(norm) + largest_sq)
        if second - best <= margin:
            near[count], limits[count] = col, best + margin
            count += 1
    if count:
        _float64_argmins(
            dists, centroid_sq, frames, centroids, near[:count], limits[:count], sq_dists, second_sq, index32
        )
    for col in range(sq_dists.shape[0]):
        indices[col] = index32[col]
    return count


@_compiled()
def _float64_argmins(
    dists, centroid_sq, frames, centroids, near, limits, sq_dists, second_sq, index32
):  # pragma: no cover - compiled
    """For each column near[i]: among the rows whose partial distance (as the sweep summed it) is at most limits[i],
    the first with the
    smallest float64 squared distance to the frame, summed directly (the float32 differences and their squares are
    exact in float64); its index and distance replace the column's, and second_sq takes the smallest GEMM distance.
    Row by row over the near columns (in order), not column by column: a column of dists is strided by the chunk."""
    winners, winner_sq = np.zeros(near.shape[0], dtype=np.int32), np.full(near.shape[0], np.inf)
    two = np.float32(2.0)
    for row in range(dists.shape[0]):
        values, offset, codeword = dists[row], centroid_sq[row], centroids[row]
        for i in range(near.shape[0]):
            if offset - two * values[near[i]] <= limits[i]:
                frame, total = frames[near[i]], 0.0
                for d in range(frame.shape[0]):
                    diff = np.float64(frame[d]) - np.float64(codeword[d])
                    total += diff * diff
                if total < winner_sq[i]:
                    winners[i], winner_sq[i] = row, total
    for i in range(near.shape[0]):
        col = near[i]
        second_sq[col], sq_dists[col], index32[col] = sq_dists[col], np.float32(winner_sq[i]), winners[i]


@_compiled(fastmath={"reassoc", "contract"})
def _direct_sq_dist(frame, centroid):  # pragma: no cover - compiled
    """||frame - centroid||^2 summed directly in float32 (rounding relative to the result, unlike the expansion)."""
    total = np.float32(0.0)
    for col in range(frame.shape[0]):
        diff = frame[col] - centroid[col]
        total += diff * diff
    return total


@_compiled(fastmath={"reassoc", "contract"})
def _bounds_pass(
    frames, centroids, labels, frames_sq, lower, half_gaps, other_moves, gamma, largest_sq, sq_dists, active, offset
):  # pragma: no cover
    """One pass of Hamerly's test (codebook.bounds): each frame's direct squared distance to its own centroid into
    sq_dists, its lower bound lowered by the largest move of another centroid (other_moves[own]); the frames whose
    label may change by more than the GEMM's rounding (gamma; largest_sq: the largest |c|^2) are listed in active,
    in order and counted from offset, and their number returned."""
    for row in range(frames.shape[0]):
        sq_dists[row] = _direct_sq_dist(frames[row], centroids[labels[row]])
    count = 0
    for row in range(frames.shape[0]):  # a loop of its own, without the reduction over dims
        label = labels[row]
        bound = lower[row] - other_moves[label]
        lower[row] = bound
        upper_sq = np.float64(sq_dists[row]) * (1 + 4 * gamma)  # the direct sum's rounding is relative
        low, half = max(bound, 0.0), half_gaps[label]
        margin = max(low * low - upper_sq, 4 * half * (half - np.sqrt(upper_sq)))
        active[count] = row + offset
        count += margin <= 4 * gamma * (np.float64(frames_sq[row]) + largest_sq)
    return count


@_compiled(fastmath={"reassoc", "contract"})
def _take_labels(
    frames, centroids, frames_sq, rows, found, second_sq, gamma, largest_sq, labels, lower, sq_dists
):  # pragma: no cover
    """For each frame rows[i], assigned afresh to found[i]: its lower bound from the second nearest's GEMM distance
    less the GEMM's rounding bound, and where its label changed, the new label and its direct squared distance."""
    for i in range(rows.shape[0]):
        row = rows[i]
        rounding = 2 * gamma * (np.float64(frames_sq[row]) + largest_sq)
        lower[row] = np.sqrt(max(np.float64(second_sq[i]) - rounding, 0.0))
        if labels[row] == found[i]:
            continue
        labels[row] = found[i]
        sq_dists[row] = _direct_sq_dist(frames[row], centroids[found[i]])


@_compiled(fastmath={"reassoc", "contract"})
def _row_sq_norms(frames, out):  # pragma: no cover - compiled
    # Reassociation lets LLVM vectorize each row's sum: 5x torch's square().sum(dim=1) at D=768.
    for row in range(frames.shape[0]):
        total = np.float32(0.0)
        for col in range(frames.shape[1]):
            total += frames[row, col] * frames[row, col]
        out[row] = total


@_compiled()
def _largest_sq_norm(rows):  # pragma: no cover - compiled
    """distances.largest_sq_norm without torch: the largest squared row norm, summed in float64."""
    largest = 0.0
    for row in range(rows.shape[0]):
        total = 0.0
        for col in range(rows.shape[1]):
            total += np.float64(rows[row, col]) * np.float64(rows[row, col])
        largest = max(largest, total)
    return largest


@_compiled()
def _add_rows_by_label(frames, labels, sums):  # pragma: no cover - compiled
    for row in range(frames.shape[0]):
        target = sums[labels[row]]
        for col in range(frames.shape[1]):
            target[col] += frames[row, col]


def cluster_sums(frames: torch.Tensor, labels: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-cluster sums (codebook_size, dim) float64 of float32 frames (ATen's index_add_ took 2.5x the whole
    argmin here). Deterministic whatever the thread count: the frames are cut into a number of blocks that depends
    on their count only, each block is added in frame order into its own sums by whichever worker takes it, and the
    blocks' sums are added in block order."""
    frames_np, labels_np = frames.detach().contiguous().numpy(), labels.contiguous().numpy()
    block_rows = _block_rows(frames.shape[0])
    partials = torch.zeros(-(-frames.shape[0] // block_rows), codebook_size, frames.shape[1], dtype=torch.float64)
    partials_np = partials.numpy()

    def add_block(block, start, end):
        _add_rows_by_label(frames_np[start:end], labels_np[start:end], partials_np[block])

    _in_blocks(frames.shape[0], block_rows, lambda: add_block, _threads())
    sums = partials[0]
    for block in partials[1:]:
        sums += block
    return sums


@_compiled()
def _moves_by_label(frames, old_labels, new_labels, sums, counts):  # pragma: no cover - compiled
    moved = 0
    for row in range(frames.shape[0]):
        old, new = old_labels[row], new_labels[row]
        if old == new:
            continue
        moved += 1
        counts[old] -= 1
        counts[new] += 1
        for col in range(frames.shape[1]):
            value = np.float64(frames[row, col])
            sums[old, col] -= value
            sums[new, col] += value
    return moved


def cluster_moves(
    frames: torch.Tensor, old_labels: torch.Tensor, new_labels: torch.Tensor, codebook_size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What relabelling the frames does to cluster_sums and the counts: (sums float64, counts int64, frames moved),
    each moved frame subtracted from its old cluster and added to its new one, in frame order (deterministic). A
    pass over the labels and over the few frames that move, instead of over all frames."""
    sums = torch.zeros(codebook_size, frames.shape[1], dtype=torch.float64)
    counts = torch.zeros(codebook_size, dtype=torch.long)
    moved = _moves_by_label(
        frames.detach().contiguous().numpy(), old_labels.contiguous().numpy(), new_labels.contiguous().numpy(),
        sums.numpy(), counts.numpy(),
    )  # fmt: skip
    return sums, counts, int(moved)


SEEDING_BLOCK = 256  # frames per block of a k-means++ step: the candidates' partial dot products stay in L1


@_compiled()
def _dots_into(space, points, start, end, out):  # pragma: no cover - compiled
    """out[t, :end - start] = points[t] . space[:, start:end] for each point t, four dims per pass over the block
    (a pass per dim loaded and stored the running sums four times as often: 2x slower). Without fastmath: each dot
    product is a chain of fused multiply-adds in dim order, vectorized across frames only, so the same bits come out
    on every CPU (k-means++ must choose the same frames everywhere; see kmeans.kmeans_plusplus)."""
    dim, count = space.shape[0], end - start
    for t in range(points.shape[0]):
        for j in range(count):
            out[t, j] = 0.0
    d = 0
    while d + 4 <= dim:
        s0, s1, s2, s3 = space[d, start:end], space[d + 1, start:end], space[d + 2, start:end], space[d + 3, start:end]
        for t in range(points.shape[0]):
            c0, c1, c2, c3 = points[t, d], points[t, d + 1], points[t, d + 2], points[t, d + 3]
            row = out[t]
            for j in range(count):
                row[j] = _fma(c3, s3[j], _fma(c2, s2[j], _fma(c1, s1[j], _fma(c0, s0[j], row[j]))))
        d += 4
    while d < dim:
        s0 = space[d, start:end]
        for t in range(points.shape[0]):
            c0, row = points[t, d], out[t]
            for j in range(count):
                row[j] = _fma(c0, s0[j], row[j])
        d += 1


@_compiled()
def _candidate_potentials(space, frames_sq, which, closest, dists, potentials):  # pragma: no cover - compiled
    """For each candidate frame which[t]: its squared distances to all frames into dists[t] (|p|^2 + |x|^2 - 2 p.x,
    clamped at zero, in float32 as torch's addmm), and potentials[t], the sum (float64) of min(dists[t], closest).
    Without fastmath, as _dots_into: the same bits on every CPU."""
    dim, num_frames = space.shape
    points = np.empty((which.shape[0], dim), dtype=np.float32)
    points_sq = np.zeros(which.shape[0], dtype=np.float32)
    for t in range(which.shape[0]):
        for d in range(dim):
            points[t, d] = space[d, which[t]]
            points_sq[t] += points[t, d] * points[t, d]
        potentials[t] = 0.0
    dots = np.empty((which.shape[0], SEEDING_BLOCK), dtype=np.float32)
    sums = np.empty(8)  # eight running sums of a candidate's block, frame j into sum j % 8 (see below)
    for start in range(0, num_frames, SEEDING_BLOCK):
        end = min(num_frames, start + SEEDING_BLOCK)
        _dots_into(space, points, start, end, dots)
        for t in range(which.shape[0]):
            row, base, two_dots = dists[t], points_sq[t], dots[t]
            # Eight running sums added in a fixed order: one chain of dependent float64 adds waited on each add's
            # latency, and reassociation would let the CPU choose the order.
            sums[:] = 0.0
            j = 0
            while j + 8 <= end - start:
                for k in range(8):
                    value = max(base + frames_sq[start + j + k] - np.float32(2.0) * two_dots[j + k], np.float32(0.0))
                    row[start + j + k] = value
                    sums[k] += min(value, closest[start + j + k])
                j += 8
            while j < end - start:
                value = max(base + frames_sq[start + j] - np.float32(2.0) * two_dots[j], np.float32(0.0))
                row[start + j] = value
                sums[0] += min(value, closest[start + j])
                j += 1
            potentials[t] += ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]))


@_compiled()
def _greedy_kmeans_plusplus(space, first, draws, chosen):  # pragma: no cover - compiled
    """kmeans.kmeans_plusplus' steps (see kmeans_plusplus_rows): chosen[0] = first, then for each row of draws the
    candidates drawn by inverse CDF of the squared distance to the nearest chosen frame, and the one whose
    potential is least (the first on a tie)."""
    dim, num_frames = space.shape
    frames_sq = np.zeros(num_frames, dtype=np.float32)
    for d in range(dim):
        for j in range(num_frames):
            frames_sq[j] += space[d, j] * space[d, j]
    closest, cdf = np.full(num_frames, np.inf, dtype=np.float32), np.empty(num_frames, dtype=np.float64)
    dists = np.empty((draws.shape[1], num_frames), dtype=np.float32)
    candidates, potentials = np.empty(draws.shape[1], dtype=np.int64), np.empty(draws.shape[1], dtype=np.float64)
    chosen[0] = candidates[0] = first
    _candidate_potentials(space, frames_sq, candidates[:1], closest, dists[:1], potentials[:1])
    closest[:] = dists[0]
    for step in range(draws.shape[0]):
        total = 0.0
        for j in range(num_frames):
            total += closest[j]
            cdf[j] = total
        for t in range(draws.shape[1]):
            if total > 0:
                candidates[t] = min(num_frames - 1, np.searchsorted(cdf, draws[step, t] * total, side="right"))
            else:  # every frame coincides with a chosen one: any choice is as good
                candidates[t] = min(num_frames - 1, int(draws[step, t] * num_frames))
        _candidate_potentials(space, frames_sq, candidates, closest, dists, potentials)
        pick = np.argmin(potentials)
        chosen[step + 1] = candidates[pick]
        for j in range(num_frames):
            closest[j] = min(closest[j], dists[pick, j])


def kmeans_plusplus_rows(space: torch.Tensor, first: int, draws: torch.Tensor) -> torch.Tensor:
    """The frames (int64 indices) greedy k-means++ chooses, as kmeans._greedy_rows does with torch ops, in one
    compiled loop: at K=100 on 10,000 frames of D=39 torch's dozen ops per step took 0.42 ms of it, this loop takes
    0.2 ms (2-core AMD EPYC). space: (dim, num_frames) float32; first: the first frame; draws: (codebook_size - 1,
    candidates per step) float64 uniforms in [0, 1)."""
    chosen = torch.empty(draws.shape[0] + 1, dtype=torch.long)
    _greedy_kmeans_plusplus(
        space.detach().to(torch.float32).contiguous().numpy(), first, draws.to(torch.float64).contiguous().numpy(),
        chosen.numpy(),
    )  # fmt: skip
    return chosen


@_compiled()
def _sq_norm_sum(frames):  # pragma: no cover - compiled
    """Sum over the rows of |x|^2 in float64, in row order: each square of a float32 is exact in float64, and the
    fixed order (no fastmath) gives the same bits on every CPU."""
    total = 0.0
    for row in range(frames.shape[0]):
        partial = 0.0
        for col in range(frames.shape[1]):
            value = np.float64(frames[row, col])
            partial += value * value
        total += partial
    return total


def sq_norm_total(frames: torch.Tensor) -> float:
    """sum_i |x_i|^2 of (num_frames, dim) float32 CPU frames, in float64, the same on every CPU whatever the thread
    count: blocks whose bounds depend on the frame count alone, each summed in order, added in block order."""
    frames_np = frames.detach().to(torch.float32).contiguous().numpy()
    block_rows = _block_rows(frames.shape[0])
    partials = [0.0] * -(-frames.shape[0] // block_rows)

    def add_block(block, start, end):
        partials[block] = _sq_norm_sum(frames_np[start:end])

    _in_blocks(frames.shape[0], block_rows, lambda: add_block, _threads())
    return sum(partials)  # in block order


@_compiled()
def _inertia_offset(sums, counts, centroids):  # pragma: no cover - compiled
    """sum_k (n_k |c_k|^2 - 2 c_k . S_k) in float64, cluster by cluster, dim by dim."""
    total = 0.0
    for k in range(centroids.shape[0]):
        count, partial = np.float64(counts[k]), 0.0
        for d in range(centroids.shape[1]):
            c = np.float64(centroids[k, d])
            partial += c * (count * c - 2.0 * sums[k, d])
        total += partial
    return total


def inertia_from_totals(
    sq_norm_total: float, sums: torch.Tensor, counts: torch.Tensor, centroids: torch.Tensor
) -> float:
    """sum_i |x_i - c_(label i)|^2 = sum_i |x_i|^2 + sum_k (n_k |c_k|^2 - 2 c_k . S_k), from the cluster totals (S_k,
    n_k: float64 sums and counts of the frames labelled k) in float64, in a fixed order: the same number on every CPU,
    where a sum of the fp32 GEMM distances follows the BLAS kernel's rounding."""
    return sq_norm_total + _inertia_offset(
        sums.detach().cpu().to(torch.float64).contiguous().numpy(), counts.detach().cpu().contiguous().numpy(),
        centroids.detach().cpu().to(torch.float32).contiguous().numpy(),
    )  # fmt: skip


@_compiled()
def _exact_sq_dists(frames, centroids, labels, out):  # pragma: no cover - compiled
    for row in range(frames.shape[0]):
        codeword, total = centroids[labels[row]], 0.0
        for col in range(frames.shape[1]):
            diff = np.float64(frames[row, col]) - np.float64(codeword[col])
            total += diff * diff
        out[row] = total


def exact_sq_dists(frames: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """|x_i - c_(label i)|^2 in float64, summed directly in a fixed order (the float32 differences are exact in
    float64): the same on every CPU."""
    out = torch.empty(frames.shape[0], dtype=torch.float64)
    frames_np, labels_np = frames.detach().to(torch.float32).contiguous().numpy(), labels.contiguous().numpy()
    codewords = centroids.detach().to(torch.float32).contiguous().numpy()
    block_rows = _block_rows(frames.shape[0])

    def block(_, start, end):
        _exact_sq_dists(frames_np[start:end], codewords, labels_np[start:end], out.numpy()[start:end])

    _in_blocks(frames.shape[0], block_rows, lambda: block, _threads())
    return out


MAX_BLOCKS, MIN_BLOCK_ROWS = 8, 16384  # per-frame passes (sums, bounds): up to 8 workers, 16k frames a block


def _block_rows(num_rows: int) -> int:
    blocks = max(1, min(MAX_BLOCKS, num_rows // MIN_BLOCK_ROWS))
    return max(1, -(-num_rows // blocks))


def _in_blocks(num_rows: int, block_rows: int, worker_task, workers: int) -> None:
    """The rows in blocks of block_rows, which up to `workers` workers draw in turn from a shared counter (next() on
    it is atomic under the GIL): each worker calls worker_task() once (its buffers) and then the task it returns,
    task(block, start, end), for every block it draws."""
    num_blocks = -(-num_rows // block_rows)
    blocks = itertools.count()

    def work():
        task = worker_task()
        while (block := next(blocks)) < num_blocks:
            task(block, block * block_rows, min(num_rows, (block + 1) * block_rows))

    _run_workers(work, max(1, min(workers, num_blocks)))


def row_sq_norms(frames: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of a (num_frames, dim) float32 CPU tensor."""
    out = torch.empty(frames.shape[0], dtype=torch.float32)
    _row_sq_norms(frames.detach().contiguous().numpy(), out.numpy())
    return out


def nearest_cpu(
    frames: torch.Tensor, centroids: torch.Tensor, chunk_size: int, frames_sq: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64, squared distances float32) of each frame's nearest centroid: the float64 argmin (ties to the
    first), from fp32 GEMM distances, ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 (the argmin does not need ||x||^2, so
    it is added after), with the frames whose two best are within the GEMM's rounding re-ranked in float64."""
    indices, sq_dists, _ = _sweep(frames, centroids, chunk_size, frames_sq)
    return indices, sq_dists


def nearest_two_cpu(
    frames: torch.Tensor,
    centroids: torch.Tensor,
    chunk_size: int,
    frames_sq: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As nearest_cpu (the same labels and distances), and a lower bound on the squared distance to every other
    centroid: the second smallest GEMM distance (inf with one centroid; equal to the nearest's on a tie), or for a
    re-ranked frame the smallest. rows: only these frames (int64 indices, results in their order), gathered a chunk
    at a time into a buffer the GEMM then reads from cache: a gather of all of them at once wrote and re-read the
    whole selection (at D=768 it cost as much as the GEMM it saved)."""
    return _sweep(frames, centroids, chunk_size, frames_sq, rows)


def _sweep(frames, centroids, chunk_size, frames_sq, rows: torch.Tensor | None = None):
    """One worker per torch thread, each taking the next chunk of frames: gather (rows), norms, GEMM, sweep, all
    while the chunk is in its core's cache. The GEMM is numpy's BLAS on one thread per worker: on the 2-core AMD
    EPYC it was 7 % (D=768) to 13 % (D=39) faster than torch's MKL with the same two threads, and independent
    workers need no fork-join per GEMM (scripts/bench.py measures both against faiss)."""
    frames, centroids = frames.detach().to(torch.float32).contiguous(), centroids.detach().to(torch.float32)
    codewords = centroids.contiguous().numpy()
    num_frames = frames.shape[0] if rows is None else rows.numel()
    work = num_frames * codewords.shape[0] * codewords.shape[1]  # multiply-adds of the GEMM
    workers = max(1, min(_threads(), work // MIN_WORK_PER_WORKER))
    chunk_size = _even_chunks(num_frames, chunk_size, spread=work >= 2 * MIN_WORK_PER_WORKER)
    outputs = _SweepOutputs(num_frames)
    norms = None if frames_sq is None else frames_sq.to(torch.float32).contiguous().numpy()
    sweep = _ChunkSweep(frames.numpy(), None if rows is None else rows.numpy(), norms, codewords, chunk_size, outputs)
    _in_blocks(num_frames, chunk_size, sweep.worker_task, workers)
    return outputs.indices, outputs.sq_dists, outputs.second_sq


def _even_chunks(num_frames: int, chunk_size: int, spread: bool) -> int:
    """At most chunk_size frames a chunk, all chunks of (nearly) one size, and with spread a multiple of SPREAD of
    them, so workers finish together (a 25.6k-frame Lloyd pass at 4,096 frames a chunk went 4 + 3 over 2 workers).
    The chunking depends on the frames alone, not on the thread count, because a GEMM's last bits depend on it."""
    count = -(-num_frames // max(chunk_size, 1))
    if spread:
        count = -(-count // SPREAD) * SPREAD
    return max(1, -(-num_frames // max(count, 1)))


SPREAD = 8  # where two workers would run, chunks come in multiples of this: even over 1, 2, 4 or 8 workers

# Starting a worker thread costs ~0.3 ms here; 2^24 multiply-adds take about as long on one core (2-core AMD EPYC:
# D=39 K=100 gained from ~6,000 frames on, D=768 K=500 from fewer than 600).
MIN_WORK_PER_WORKER = 1 << 24


class _SweepOutputs:
    """Per-frame results of a sweep (torch tensors, written through numpy views by the workers)."""

    def __init__(self, num_frames: int):
        self.indices = torch.empty(num_frames, dtype=torch.long)
        self.sq_dists = torch.empty(num_frames, dtype=torch.float32)
        self.second_sq = torch.empty(num_frames, dtype=torch.float32)
        self.norms = torch.empty(num_frames, dtype=torch.float32)


class _ChunkSweep:
    """The shared, read-only inputs of one sweep; worker_task gives each worker its buffers and chunk task. norms: the
    squared norms of all frames, or None to compute them chunk by chunk; with rows they are gathered a chunk at a
    time with the frames (indexing them all first took 0.2-0.6 ms of a 9 ms sweep)."""

    def __init__(self, frames, rows, norms, codewords, chunk_size, outputs: _SweepOutputs):
        self.frames, self.rows, self.norms, self.codewords, self.chunk_size = frames, rows, norms, codewords, chunk_size
        self.centroid_sq = np.empty(codewords.shape[0], dtype=np.float32)
        _row_sq_norms(codewords, self.centroid_sq)
        # No torch op here: its OpenMP threads spin on after a parallel region, taking a core from the workers.
        self.gamma, self.largest_sq = gemm_gamma(codewords.shape[1]), _largest_sq_norm(codewords)
        self.out = [t.numpy() for t in (outputs.indices, outputs.sq_dists, outputs.second_sq, outputs.norms)]

    def worker_task(self):
        size, num_codewords = self.chunk_size, self.codewords.shape[0]
        dists_buffer = np.empty(num_codewords * size, dtype=np.float32)  # reused: fresh ones cost page faults
        index32 = np.empty(size, dtype=np.int32)
        gathered = np.empty((size, self.frames.shape[1]) if self.rows is not None else (0, 0), dtype=np.float32)
        indices, sq_dists, second_sq, norms = self.out

        def sweep_chunk(_, start, end):
            if self.rows is None:
                chunk = self.frames[start:end]
            else:  # a chunk at a time into a buffer the GEMM then reads from cache (see nearest_two_cpu)
                chunk = gathered[: end - start]
                _gather_rows(self.frames, self.rows[start:end], chunk)
            chunk_norms = norms[start:end]
            if self.norms is None:
                _row_sq_norms(chunk, chunk_norms)
            elif self.rows is None:
                chunk_norms = self.norms[start:end]
            else:
                _gather_values(self.norms, self.rows[start:end], chunk_norms)
            dists = dists_buffer[: num_codewords * (end - start)].reshape(num_codewords, end - start)
            codeword_dots(self.codewords, chunk, dists)  # (codebook_size, chunk): the sweep reads rows
            _nearest_two_in_chunk(
                dists, self.centroid_sq, chunk, self.codewords, chunk_norms, self.gamma, self.largest_sq,
                sq_dists[start:end], second_sq[start:end], indices[start:end], index32[: end - start],
            )  # fmt: skip

        return sweep_chunk


def codeword_dots(codewords: np.ndarray, chunk: np.ndarray, out: np.ndarray) -> None:
    """out = codewords @ chunk.T: the one GEMM of the CPU search (numpy's BLAS; its rounding differs from one BLAS
    and CPU to the next, which the labels and k-means never follow: tests/test_kmeans.py perturbs it)."""
    np.matmul(codewords, chunk.T, out=out)


_worker_threads: int | None = None  # set while torch's own ops are held to one thread (torch_on_one_thread)


def _threads() -> int:
    return _worker_threads or torch.get_num_threads()


@contextlib.contextmanager
def torch_on_one_thread():
    """For a loop of sweeps with torch bookkeeping between them (Lloyd): torch's own ops run on one thread, while the
    sweeps keep one worker per thread asked for. After each parallel region libgomp's threads spin on for a while,
    and on 2 cores they took a core from the next sweep's workers: Lloyd at D=39 K=100, 216k frames, 10 iterations
    from a warm start, 0.25-0.31 s -> 0.20-0.25 s (2-core AMD EPYC; OMP_WAIT_POLICY=PASSIVE gave the same)."""
    global _worker_threads
    threads, saved = torch.get_num_threads(), _worker_threads
    _worker_threads = saved or threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _worker_threads = saved


def _run_workers(work, workers: int) -> None:
    """work() on this thread and workers - 1 helpers, numpy's BLAS held to one thread each meanwhile."""
    with _one_blas_thread():
        if workers == 1:
            work()
            return
        others = _on_helpers(work, workers - 1)
        work()
        for other in others:
            other.result()


# The helper threads outlive each call: a thread started per call cost the first chunk it took up to 3 ms more than
# the others (a 65k-frame D=39 K=100 sweep took 8.9 ms instead of 5.6 ms on the 2-core AMD EPYC). Idle helpers only
# wait on their queue, and a forked child (a DataLoader worker) has none of them, so it starts its own.
_helper_pool: ThreadPoolExecutor | None = None
_helper_count = 0
_helper_lock = threading.Lock()


def _on_helpers(work, count: int) -> list:
    """work() submitted to `count` helpers (futures); the pool grows to count helpers where it has fewer."""
    global _helper_pool, _helper_count
    with _helper_lock:  # also around the submits: a pool replaced by another caller takes no more work
        if _helper_pool is None or _helper_count < count:
            if _helper_pool is not None:
                _helper_pool.shutdown(wait=False)  # its helpers finish what they hold, then exit
            _helper_pool, _helper_count = ThreadPoolExecutor(count, thread_name_prefix="speechvq-sweep"), count
        return [_helper_pool.submit(work) for _ in range(count)]


def _forget_helpers() -> None:
    global _helper_pool, _helper_count, _helper_lock
    _helper_pool, _helper_count, _helper_lock = None, 0, threading.Lock()  # the parent's lock may have been held


os.register_at_fork(after_in_child=_forget_helpers)


@functools.cache
def _numpy_blas():
    return ThreadpoolController().select(user_api="blas")


def _one_blas_thread():
    return _numpy_blas().limit(limits=1)


@_compiled()
def _gather_values(values, rows, out):  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        out[i] = values[rows[i]]


@_compiled()
def _gather_rows(frames, rows, out):  # pragma: no cover - compiled
    # Element by element: a row slice per frame (out[i] = frames[rows[i]]) took 2-2.6x as long at D=39 and D=768.
    for i in range(rows.shape[0]):
        row = rows[i]
        for col in range(frames.shape[1]):
            out[i, col] = frames[row, col]


def bounds_pass(frames, centroids, labels, frames_sq, lower, half_gaps, other_moves, gamma, largest_sq, sq_dists):
    """codebook.bounds' per-iteration test over all frames (see _bounds_pass); returns the rows that may change,
    in order (each block lists its own; the lists are joined in block order)."""
    active = torch.empty(frames.shape[0], dtype=torch.long)
    per_frame = [t.numpy() for t in (frames, labels, frames_sq, lower, sq_dists, active)]
    shared = [t.numpy() for t in (centroids, half_gaps, other_moves)]
    block_rows = _block_rows(frames.shape[0])
    counts = [0] * -(-frames.shape[0] // block_rows)

    def test_block(block, start, end):
        x, own, x_sq, low, sq, out = (array[start:end] for array in per_frame)
        counts[block] = _bounds_pass(x, shared[0], own, x_sq, low, *shared[1:], gamma, largest_sq, sq, out, start)

    _in_blocks(frames.shape[0], block_rows, lambda: test_block, _threads())
    return torch.cat([active[block * block_rows :][:count] for block, count in enumerate(counts)])


def take_labels(frames, centroids, frames_sq, rows, found, second_sq, gamma, largest_sq, labels, lower, sq_dists):
    """codebook.bounds' update of the frames `rows` after a fresh assignment (see _take_labels); labels of -1 mark
    frames without one yet."""
    arrays = [t.numpy() for t in (frames, centroids, frames_sq, rows, found, second_sq)]
    _take_labels(*arrays, gamma, largest_sq, labels.numpy(), lower.numpy(), sq_dists.numpy())
