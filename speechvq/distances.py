"""Exact nearest codewords from fp32 GEMM distances, and the rounding bound that makes them exact.

A leaf: quantize (the dispatcher), cpu_kernels, gpu_kernels and codebook.bounds all build on the bound, and the
kernels fall back on torch's path here for their last near ties. Nothing in speechvq is imported here."""

from __future__ import annotations

import math

import torch


def gemm_nearest(
    frames: torch.Tensor,
    centroids: torch.Tensor,
    chunk_size: int,
    tf32: bool = False,
    frames_sq: torch.Tensor | None = None,
):
    """torch's path: (indices, squared distances) from one GEMM per chunk. fp32 (exact): the float64 argmin, as
    cpu_kernels gives it (frames whose two best are within the GEMM's rounding re-ranked in float64); tf32: plain."""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the argmin does not need ||x||^2, so add it after the min.
    centroid_sq = centroids.square().sum(dim=1)
    indices = torch.empty(frames.shape[0], dtype=torch.long, device=frames.device)
    sq_dists = torch.empty(frames.shape[0], dtype=torch.float32, device=frames.device)
    gamma, largest_sq = gemm_gamma(frames.shape[1]), largest_sq_norm(centroids)
    near_ties = []
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for start in range(0, frames.shape[0], chunk_size):
            chunk = frames[start : start + chunk_size].to(torch.float32)
            rows = slice(start, start + chunk.shape[0])
            partial = torch.addmm(centroid_sq, chunk, centroids.T, alpha=-2.0)  # (chunk, codebook_size)
            norms = frames_sq[rows] if frames_sq is not None else chunk.square().sum(dim=1)
            best, best_index = partial.min(dim=1)
            indices[rows] = best_index
            sq_dists[rows] = (best + norms).clamp_(min=0.0)
            if not tf32:  # near ties: the second best within the rounding bound of the best
                second = partial.scatter_(1, best_index[:, None], math.inf).amin(dim=1)  # amin is vectorized
                margin = 4 * gamma * (norms.double() + largest_sq)
                near_ties.append(start + ((second.double() - best.double()) <= margin).nonzero().squeeze(1))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    near = torch.cat(near_ties) if near_ties else indices[:0]
    for part in near.split(chunk_size):  # all chunks' near ties at once: few, so one small float64 GEMM or so
        indices[part], sq_dists[part] = float64_nearest(frames[part], centroids)
    return indices, sq_dists


def float64_nearest(frames: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 argmin (first of equal distances) and its squared distance as float32, for a few frames."""
    x, c = frames.double(), centroids.double()
    sq = torch.addmm(c.square().sum(dim=1), x, c.T, alpha=-2.0) + x.square().sum(dim=1, keepdim=True)
    best, index = sq.min(dim=1)
    return index, best.clamp_(min=0.0).float()


FP32_UNIT_ROUNDOFF = 2.0**-24


def gemm_gamma(dim: int) -> float:
    """gamma_{D+3} of fp32: the fp32 distance ||x||^2 - 2 x.c + ||c||^2 from a GEMM is off by at most
    2 gamma (|x|^2 + |c|^2) (the dot-product bound with the two norms and the additions), whatever the GEMM's
    order. Two distances closer than twice that can be in either order."""
    terms = dim + 3
    return terms * FP32_UNIT_ROUNDOFF / (1 - terms * FP32_UNIT_ROUNDOFF)


def largest_sq_norm(centroids: torch.Tensor) -> float:
    return float(centroids.double().square().sum(dim=1).max()) if centroids.numel() else 0.0
