"""A fused distance + argmin kernel (Triton) for low-dimensional features: each program keeps a block of frames
in registers, walks the codebook in blocks and keeps a running minimum, so the (frames x codebook) distance
matrix is never written to memory. The products use fp32-accurate arithmetic (3xTF32 by default, or plain fp32
FMA), so the labels are those of the fp32 computation up to rounding order.

Runs on CUDA; with TRITON_INTERPRET=1 the same kernel runs on the CPU (that is how the tests check it)."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with the CUDA wheels of torch
    triton = None


def available(device: torch.device) -> bool:
    """Whether the fused kernel can run for tensors on `device`."""
    if triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _nearest_kernel(
        x_ptr,
        c_ptr,
        cnorm_ptr,
        out_idx_ptr,
        out_dist_ptr,
        num_frames,
        stride_x,
        stride_c,
        NUM_CODES: tl.constexpr,
        DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        # NUM_CODES and DIM are compile-time constants: one compilation per codebook shape, static loops.
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < num_frames
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < DIM), other=0.0
        )
        x_sq = tl.sum(x * x, axis=1)
        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), tl.int32)
        for start in range(0, NUM_CODES, BLOCK_K):
            codes = start + tl.arange(0, BLOCK_K)
            code_ok = codes < NUM_CODES
            c = tl.load(
                c_ptr + codes[:, None] * stride_c + dims[None, :],
                mask=code_ok[:, None] & (dims[None, :] < DIM),
                other=0.0,
            )
            c_sq = tl.load(cnorm_ptr + codes, mask=code_ok, other=float("inf"))
            dots = tl.dot(x, tl.trans(c), input_precision=PRECISION)  # (BLOCK_N, BLOCK_K)
            partial = c_sq[None, :] - 2.0 * dots
            block_best = tl.min(partial, axis=1)
            block_idx = tl.argmin(partial, axis=1) + start
            better = block_best < best  # strict: the first (lowest) index wins ties, as torch.argmin
            best = tl.where(better, block_best, best)
            best_idx = tl.where(better, block_idx, best_idx)
        tl.store(out_idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
        tl.store(out_dist_ptr + rows, tl.maximum(best + x_sq, 0.0), mask=row_ok)


def fused_nearest(
    frames: torch.Tensor,
    centroids: torch.Tensor,
    block_n: int = 256,
    block_k: int = 128,
    precision: str = "tf32x3",
    num_warps: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_frames, dim) x (codebook_size, dim) -> (indices int64, squared distances fp32). dim <= 128.

    precision: "tf32x3" (default: three TF32 tensor-core products, fp32-level accuracy; on an H100 the fastest
    configuration measured, 2.6 G frames/s at D=39 K=100 with labels equal to the float64 argmin) or "ieee"
    (plain fp32 FMA products)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    frames = frames.contiguous().float()
    centroids = centroids.contiguous().float().to(frames.device)
    num_frames, dim = frames.shape
    if dim > 128:
        raise ValueError("the fused kernel is for dim <= 128; use the GEMM path above that")
    block_d = max(16, triton.next_power_of_2(dim))
    if precision == "ieee" and block_k > 64:
        block_k = 64  # wider codebook blocks spill registers with FMA products (measured: 20x slower)
    indices = torch.empty(num_frames, dtype=torch.long, device=frames.device)
    distances = torch.empty(num_frames, dtype=torch.float32, device=frames.device)
    if num_frames == 0:
        return indices, distances
    grid = (triton.cdiv(num_frames, block_n),)
    _nearest_kernel[grid](
        frames,
        centroids,
        centroids.square().sum(1).contiguous(),
        indices,
        distances,
        num_frames,
        frames.stride(0),
        centroids.stride(0),
        NUM_CODES=centroids.shape[0],
        DIM=dim,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        PRECISION=precision,
        num_warps=num_warps,
    )
    return indices, distances
