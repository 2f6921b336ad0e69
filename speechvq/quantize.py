"""Nearest-codeword search: distances as one GEMM per chunk of frames, never a per-frame loop."""

from __future__ import annotations

import torch


@torch.inference_mode()
def nearest_codewords(
    frames: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 assignment of frames (num_frames, dim) to centroids (codebook_size, dim).

    Returns (indices (num_frames,) int64, squared distances (num_frames,) float32), on frames' device.
    Memory is bounded by chunk_size * codebook_size distances at a time."""
    if frames.shape[-1] != centroids.shape[-1]:
        raise ValueError(f"frames have dim {frames.shape[-1]}, centroids have dim {centroids.shape[-1]}")
    centroids = centroids.to(device=frames.device, dtype=torch.float32)
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the argmin does not need ||x||^2, so add it after the min.
    centroid_sq = centroids.square().sum(dim=1)
    indices = torch.empty(frames.shape[0], dtype=torch.long, device=frames.device)
    sq_dists = torch.empty(frames.shape[0], dtype=torch.float32, device=frames.device)
    for start in range(0, frames.shape[0], chunk_size):
        chunk = frames[start : start + chunk_size].to(torch.float32)
        partial = torch.addmm(centroid_sq, chunk, centroids.T, alpha=-2.0)  # (chunk, codebook_size)
        best, best_index = partial.min(dim=1)
        indices[start : start + chunk.shape[0]] = best_index
        sq_dists[start : start + chunk.shape[0]] = (best + chunk.square().sum(dim=1)).clamp_(min=0.0)
    return indices, sq_dists
