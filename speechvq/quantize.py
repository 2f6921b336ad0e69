"""Nearest-codeword search: distances as one GEMM per chunk of frames (never a per-frame loop), with the argmin
on the CPU in a vectorized numba sweep (cpu_kernels), or on CUDA for small dimensions a fused Triton kernel that
never writes the distance matrix.

precision="exact" (default) is fp32 GEMMs with the frames whose two best distances are within the GEMM's rounding
bound re-ranked in float64, so labels are the float64 argmin's; "tf32" (CUDA) is a plain TF32 GEMM + argmin.
precision="fast" (CUDA, large dims) is gpu_kernels.fused_nearest_fp16: fp16 tensor-core products with a running top-2 in
registers, and every frame whose two best distances are within the products' proven error bound re-ranked with
split products, then in exact fp32, so its labels are those of the exact computation. Without Triton, "fast"
falls back to a TF32 GEMM with a heuristic re-rank margin (_tf32_top2_rerank). Speed and agreement are measured
in scripts/bench_gpu.py."""

from __future__ import annotations

import sys

import torch

from . import gpu_kernels
from .distances import gemm_nearest

FUSED_MAX_DIM = 64  # above this the GEMM path wins (the fused kernel keeps a whole frame in registers)
PRECISIONS = ("exact", "fast", "tf32")
CUDA_ONLY_PRECISIONS = ("fast", "tf32")  # TF32 exists on CUDA only; on the CPU they would silently mean exact
CPU_KERNELS_MIN_DISTANCES = 1 << 29  # see _worth_cpu_kernels


def check_chunk_size(chunk_size: int | None) -> None:
    """None (sized for the device) or a positive number of frames; anything else is refused, because a chunk
    loop that never runs would leave its output uninitialised."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of frames or None, got {chunk_size!r}")


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision in CUDA_ONLY_PRECISIONS and device.type != "cuda":
        raise ValueError(f"precision={precision!r} uses TF32 and needs CUDA; on {device.type} use 'exact'")


def default_chunk_size(device: torch.device, dim: int, codebook_size: int) -> int:
    """Frames per distance block. GPU: big blocks keep the device busy. CPU: blocks that stay in cache beat big
    GEMMs; for narrow frames (MFCC) the (K, chunk) distances are most of the traffic, so the block shrinks to keep
    them near 2 MiB (D=39 on the 2-core Xeon: K=500 197 -> 149 ms at 1,024 frames, K=1000 179 -> 125 ms at 512;
    from D=128 up the GEMM dominates and 4,096 was as fast or faster)."""
    if device.type == "cuda":
        return 1 << 19
    if dim > 64:
        return 4096
    return min(4096, max(512, 1 << ((1 << 19) // max(codebook_size, 1)).bit_length() - 1))


@torch.inference_mode()
def nearest_codewords(
    frames: torch.Tensor,
    centroids: torch.Tensor,
    chunk_size: int | None = None,
    precision: str = "exact",
    frames_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign frames (num_frames, dim) to centroids (codebook_size, dim).

    Returns (indices (num_frames,) int64, squared distances (num_frames,) float32), on frames' device.
    Memory is bounded by chunk_size * codebook_size distances at a time (None: a size suited to the device).
    frames_sq, the squared norms of the frames, saves a pass over the frames when the caller (Lloyd) has them."""
    if frames.shape[-1] != centroids.shape[-1]:
        raise ValueError(f"frames have dim {frames.shape[-1]}, centroids have dim {centroids.shape[-1]}")
    check_precision(precision, frames.device)
    check_chunk_size(chunk_size)
    centroids = centroids.to(device=frames.device, dtype=torch.float32)
    chunk_size = chunk_size or default_chunk_size(frames.device, frames.shape[-1], centroids.shape[0])
    if frames.is_cuda and frames.shape[-1] <= FUSED_MAX_DIM and gpu_kernels.available(frames.device):
        return gpu_kernels.fused_nearest(frames, centroids)
    if precision == "fast" and frames.is_cuda:
        if gpu_kernels.available(frames.device):
            return gpu_kernels.fused_nearest_fp16(frames, centroids)
        return _tf32_top2_rerank(frames, centroids, chunk_size)
    if precision == "tf32" and frames.is_cuda:
        return gemm_nearest(frames, centroids, chunk_size, tf32=True, frames_sq=frames_sq)
    if frames.device.type == "cpu" and _worth_cpu_kernels(frames.shape[0] * centroids.shape[0]):
        from . import cpu_kernels

        return cpu_kernels.nearest_cpu(frames, centroids, chunk_size, frames_sq)
    return gemm_nearest(frames, centroids, chunk_size, frames_sq=frames_sq)


def _worth_cpu_kernels(distances: int) -> bool:
    """The numba argmin (cpu_kernels) once it is loaded, or once this process's calls have asked for enough
    distances to pay its start-up (numba's import and first call take about a second; ATen's indexed min spends
    that on ~5e8 distances), so a short run never pays it and a long one does early. Both paths take the same
    distances (one GEMM in two layouts, bit-identical on MKL) and the first of equal ones, so switching mid-run
    does not change a label (tests/test_cpu_kernels.py)."""
    global _distances_on_torch_path
    if "speechvq.cpu_kernels" in sys.modules or _distances_on_torch_path + distances >= CPU_KERNELS_MIN_DISTANCES:
        return True
    _distances_on_torch_path += distances
    return False


_distances_on_torch_path = 0  # in this process, by ATen's argmin, before the numba kernels were worth loading


def _tf32_top2_rerank(frames: torch.Tensor, centroids: torch.Tensor, chunk_size: int):
    """TF32 distances for every codeword; a frame whose two best TF32 distances are closer than
    2^-10 ||x|| max||c|| is re-ranked against the whole codebook in exact fp32. TF32 keeps 10 mantissa bits;
    rounding errors of the D products mostly cancel, so the typical distance error is far below that margin
    (the worst case, 2^-9 ||x|| ||c||, would flag most frames). Agreement is measured, not assumed."""
    centroid_sq = centroids.square().sum(dim=1)
    max_norm = float(centroid_sq.max().sqrt())
    indices = torch.empty(frames.shape[0], dtype=torch.long, device=frames.device)
    sq_dists = torch.empty(frames.shape[0], dtype=torch.float32, device=frames.device)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for start in range(0, frames.shape[0], chunk_size):
            chunk = frames[start : start + chunk_size].to(torch.float32)
            torch.backends.cuda.matmul.allow_tf32 = True
            approx = torch.addmm(centroid_sq, chunk, centroids.T, alpha=-2.0)
            torch.backends.cuda.matmul.allow_tf32 = False
            best, best_index = approx.min(dim=1)
            second = approx.scatter_(1, best_index.unsqueeze(1), float("inf")).min(dim=1).values
            frame_sq = chunk.square().sum(dim=1)
            bound = 2.0**-10 * frame_sq.sqrt() * max_norm
            doubtful = ((second - best) <= bound).nonzero().squeeze(1)
            if doubtful.numel():
                exact = torch.addmm(centroid_sq, chunk[doubtful], centroids.T, alpha=-2.0)
                exact_best, exact_index = exact.min(dim=1)
                best = best.index_put((doubtful,), exact_best)
                best_index = best_index.index_put((doubtful,), exact_index)
            indices[start : start + chunk.shape[0]] = best_index
            sq_dists[start : start + chunk.shape[0]] = (best + frame_sq).clamp_(min=0.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return indices, sq_dists
