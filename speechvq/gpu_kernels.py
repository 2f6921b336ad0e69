"""A fused distance + argmin kernel (Triton) for low-dimensional features: each program keeps a block of frames
in registers, walks the codebook in blocks and keeps a running minimum, so the (frames x codebook) distance
matrix is never written to memory. The products use fp32-accurate arithmetic (3xTF32 by default, or plain fp32
FMA), so the labels are those of the fp32 computation up to rounding order.

Runs on CUDA; with TRITON_INTERPRET=1 the same kernel runs on the CPU (that is how the tests check it)."""

from __future__ import annotations

import math
import os

import torch

from .distances import gemm_nearest

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - triton ships with the CUDA wheels of torch
    triton = None


def _launch_shrinking(launch, block_n: int, block_k: int):
    """launch(block_n, block_k); where a tile needs more shared memory than this GPU has (the limit differs
    between cards and Triton versions), halve the codebook tile, then the frame tile, and launch again."""
    while True:
        try:
            return launch(block_n, block_k)
        except OutOfResources:
            if block_k > 16:
                block_k //= 2
            elif block_n > 16:
                block_n //= 2
            else:
                raise


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
            x_ptr + rows.to(tl.int64)[:, None] * stride_x + dims[None, :],
            mask=row_ok[:, None] & (dims[None, :] < DIM),
            other=0.0,
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
    centroid_sq = centroids.square().sum(1).contiguous()
    _launch_shrinking(
        lambda bn, bk: _nearest_kernel[(triton.cdiv(num_frames, bn),)](
            frames,
            centroids,
            centroid_sq,
            indices,
            distances,
            num_frames,
            frames.stride(0),
            centroids.stride(0),
            NUM_CODES=centroids.shape[0],
            DIM=dim,
            BLOCK_N=bn,
            BLOCK_K=bk,
            BLOCK_D=block_d,
            PRECISION=precision,
            num_warps=num_warps,
        ),
        block_n,
        block_k,
    )
    return indices, distances


# --- High-dimensional features (HuBERT layers: D=768, K=500): fp16 tensor-core products, exact labels -----------
#
# Each frame is scaled by a power of two so its largest entry is 2^14 (exact, and far from fp16's overflow), the
# codebook likewise; products run on fp16 tensor cores with fp32 accumulation while the kernel keeps each frame's
# best and second-best distance in registers. The rounding of the fp16 operands moves a distance by at most
# ERROR_FP16 * ||x|| * max||c||, so when the two best differ by more than twice that, the winner is certain. The
# frames where it is not are re-run with split products (x = hi + lo, three fp16 products: error 2^-14-ish),
# and the few still in doubt are re-ranked by the exact fp32 GEMM. Distances are ||x - c||^2 computed from the
# difference in fp32 (a third pass over the frame), not from the expansion.

# Rigorous bounds on |computed - true| of one distance, per unit of ||x|| * max||c||: fp16 operands (2 * 2^-11 on
# the product, times 2 in the distance) plus fp32 accumulation over at most 1024 terms (2^-14); split operands.
ERROR_FP16 = 2 * (2 * 2.0**-11 + 2.0**-22) + 2 * 2.0**-14
ERROR_SPLIT = 2 * (3 * 2.0**-22) + 2 * 2.0**-14
FP16_SCALE_EXPONENT = 14

if triton is not None:

    @triton.jit
    def _frame_norms(x_ptr, row_offsets, row_ok, DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """Pass 1: squared norms, and the power-of-two scale that puts each frame's largest entry at 2^14."""
        dims = tl.arange(0, BLOCK_D)
        x_sq = tl.zeros((BLOCK_N,), tl.float32)
        x_max = tl.zeros((BLOCK_N,), tl.float32)
        for d in range(0, DIM, BLOCK_D):
            mask = row_ok[:, None] & (d + dims[None, :] < DIM)
            x = tl.load(x_ptr + row_offsets[:, None] + d + dims[None, :], mask=mask, other=0.0)
            x_sq += tl.sum(x * x, axis=1)
            x_max = tl.maximum(x_max, tl.max(tl.abs(x), axis=1))
        return x_sq, tl.exp2(14.0 - tl.ceil(tl.log2(tl.maximum(x_max, 1e-30))))  # 14 = FP16_SCALE_EXPONENT

    @triton.jit
    def _block_products(
        x_ptr, row_offsets, row_ok, row_scale, c_hi_ptr, c_lo_ptr, codes, code_ok,
        DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
    ):  # fmt: skip
        """Pass 2, one codebook tile: scaled x . c on fp16 tensor cores (split into hi + lo parts if SPLIT)."""
        dims = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for d in range(0, DIM, BLOCK_D):
            dim_ok = d + dims < DIM
            x = tl.load(
                x_ptr + row_offsets[:, None] + d + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0
            )
            x = x * row_scale[:, None]
            x_hi = x.to(tl.float16)
            c_offsets = codes[:, None] * DIM + d + dims[None, :]
            c_mask = code_ok[:, None] & dim_ok[None, :]
            c_hi = tl.load(c_hi_ptr + c_offsets, mask=c_mask, other=0.0)
            acc = tl.dot(x_hi, tl.trans(c_hi), acc)
            if SPLIT:
                x_lo = (x - x_hi.to(tl.float32)).to(tl.float16)
                c_lo = tl.load(c_lo_ptr + c_offsets, mask=c_mask, other=0.0)
                acc = tl.dot(x_lo, tl.trans(c_hi), acc)
                acc = tl.dot(x_hi, tl.trans(c_lo), acc)
        return acc

    @triton.jit
    def _merge_top2(best, second, best_idx, partial, start, BLOCK_K: tl.constexpr):
        """The running best and second-best distances, merged with one tile's."""
        block_best = tl.min(partial, axis=1)
        block_idx = tl.argmin(partial, axis=1)
        is_best = tl.arange(0, BLOCK_K)[None, :] == block_idx[:, None]
        block_second = tl.min(tl.where(is_best, float("inf"), partial), axis=1)
        second = tl.minimum(tl.maximum(best, block_best), tl.minimum(second, block_second))
        better = block_best < best  # strict: the lowest index wins ties
        return tl.minimum(best, block_best), second, tl.where(better, block_idx + start, best_idx)

    @triton.jit
    def _distance_to(
        x_ptr, row_offsets, row_ok, c_ptr, idx, DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        """Pass 3: ||x - c_idx||^2 from the difference, in fp32."""
        dims = tl.arange(0, BLOCK_D)
        dist = tl.zeros((BLOCK_N,), tl.float32)
        for d in range(0, DIM, BLOCK_D):
            mask = row_ok[:, None] & (d + dims[None, :] < DIM)
            x = tl.load(x_ptr + row_offsets[:, None] + d + dims[None, :], mask=mask, other=0.0)
            c = tl.load(c_ptr + idx[:, None] * DIM + d + dims[None, :], mask=mask, other=0.0)
            dist += tl.sum((x - c) * (x - c), axis=1)
        return dist

    @triton.jit
    def _top2_kernel(
        x_ptr, c_hi_ptr, c_lo_ptr, c_ptr, c_sq_ptr, out_idx_ptr, out_dist_ptr, out_doubt_ptr,
        num_frames, stride_x, c_scale, margin, max_c_norm,
        NUM_CODES: tl.constexpr, DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < num_frames
        row_offsets = rows.to(tl.int64) * stride_x  # int64: rows x stride passes 2^31 at 2.8M frames of 768 dims
        x_sq, row_scale = _frame_norms(x_ptr, row_offsets, row_ok, DIM, BLOCK_N, BLOCK_D)
        unscale = 1.0 / (row_scale * c_scale)
        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        second = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), tl.int32)
        for start in range(0, NUM_CODES, BLOCK_K):
            codes = start + tl.arange(0, BLOCK_K)
            code_ok = codes < NUM_CODES
            acc = _block_products(
                x_ptr, row_offsets, row_ok, row_scale, c_hi_ptr, c_lo_ptr, codes, code_ok,
                DIM, BLOCK_N, BLOCK_K, BLOCK_D, SPLIT,
            )  # fmt: skip
            c_sq = tl.load(c_sq_ptr + codes, mask=code_ok, other=float("inf"))
            partial = c_sq[None, :] - 2.0 * acc * unscale[:, None]
            best, second, best_idx = _merge_top2(best, second, best_idx, partial, start, BLOCK_K)
        # Doubt: the two best are within the rounding's reach (or the frame is not finite).
        bound = margin * tl.sqrt(x_sq) * max_c_norm + 2.0**-20 * (max_c_norm * max_c_norm + x_sq)
        doubt = ~(second - best > bound)
        dist = _distance_to(x_ptr, row_offsets, row_ok, c_ptr, best_idx, DIM, BLOCK_N, BLOCK_D)
        tl.store(out_idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
        tl.store(out_dist_ptr + rows, dist, mask=row_ok)
        tl.store(out_doubt_ptr + rows, doubt.to(tl.int8), mask=row_ok)

    @triton.jit
    def _segment_sum_kernel(
        x_ptr,
        order_ptr,
        offsets_ptr,
        out_ptr,
        stride_x,
        DIM: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # One program per (cluster, block of dimensions): sums its cluster's rows in a fixed order, in float64.
        cluster = tl.program_id(0)
        dims = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        dim_ok = dims < DIM
        begin = tl.load(offsets_ptr + cluster)
        end = tl.load(offsets_ptr + cluster + 1)
        acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float64)
        r = begin
        while r < end:  # a while loop: the bounds are loaded values
            index = r + tl.arange(0, BLOCK_R)
            ok = index < end
            rows = tl.load(order_ptr + index, mask=ok, other=0)
            x = tl.load(x_ptr + rows[:, None] * stride_x + dims[None, :], mask=ok[:, None] & dim_ok[None, :], other=0.0)
            acc += x.to(tl.float64)
            r += BLOCK_R
        tl.store(out_ptr + cluster * DIM + dims, tl.sum(acc, axis=0), mask=dim_ok)


class Fp16Codebook:
    """The codebook as _top2_kernel reads it: scaled fp16 hi and lo parts, fp32 rows, exact squared norms."""

    def __init__(self, centroids: torch.Tensor):
        c = centroids.contiguous().float()
        largest = float(c.abs().max()) if c.numel() else 1.0
        self.scale = 2.0 ** (FP16_SCALE_EXPONENT - math.ceil(math.log2(max(largest, 1e-30))))
        scaled = c * self.scale
        self.hi = scaled.half().contiguous()
        self.lo = (scaled - self.hi.float()).half().contiguous()
        self.rows = c
        self.sq = c.double().square().sum(1).float().contiguous()
        self.max_norm = float(self.sq.max().sqrt()) if c.numel() else 0.0


def _top2(frames, book: Fp16Codebook, split: bool, block_n: int, block_k: int, block_d: int, num_warps: int):
    num_frames, dim = frames.shape
    indices = torch.empty(num_frames, dtype=torch.long, device=frames.device)
    distances = torch.empty(num_frames, dtype=torch.float32, device=frames.device)
    doubt = torch.empty(num_frames, dtype=torch.int8, device=frames.device)
    if num_frames:
        _launch_shrinking(
            lambda bn, bk: _top2_kernel[(triton.cdiv(num_frames, bn),)](
                frames,
                book.hi,
                book.lo,
                book.rows,
                book.sq,
                indices,
                distances,
                doubt,
                num_frames,
                frames.stride(0),
                book.scale,
                2 * (ERROR_SPLIT if split else ERROR_FP16),
                book.max_norm,
                NUM_CODES=book.rows.shape[0],
                DIM=dim,
                BLOCK_N=bn,
                BLOCK_K=bk,
                BLOCK_D=block_d,
                SPLIT=split,
                num_warps=num_warps,
            ),
            block_n,
            block_k,
        )
    return indices, distances, doubt.bool()


def fused_nearest_fp16(
    frames: torch.Tensor,
    centroids: torch.Tensor,
    block_n: int = 128,
    block_k: int | None = None,
    block_d: int = 64,
    num_warps: int = 8,
    stats: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_frames, dim) x (codebook_size, dim) -> (indices int64, squared distances fp32), for any dim: the
    labels are those of an exact computation (fp16 products only where they provably decide; see above).
    block_k: codewords per tile (default: the codebook rounded up to a power of two, at most 256; the defaults
    were the fastest of eight tilings on an H200, see scripts/bench_gpu.py).
    stats, if given, receives how many frames each stage resolved."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    frames = frames.contiguous().float()
    book = Fp16Codebook(centroids.to(frames.device))
    block_k = block_k or min(256, max(16, triton.next_power_of_2(book.rows.shape[0])))
    indices, distances, doubt = _top2(frames, book, False, block_n, block_k, block_d, num_warps)
    rows = doubt.nonzero().squeeze(1)
    if stats is not None:
        stats.update(frames=frames.shape[0], split=rows.numel(), fp32=0)
    if rows.numel():
        idx2, dist2, doubt2 = _top2(frames[rows], book, True, block_n, block_k, block_d, num_warps)
        indices[rows], distances[rows] = idx2, dist2
        rows = rows[doubt2]
        if stats is not None:
            stats["fp32"] = rows.numel()
    if rows.numel():
        idx3, dist3 = gemm_nearest(frames[rows], book.rows, chunk_size=1 << 16)  # exact fp32, the last near ties
        indices[rows], distances[rows] = idx3, dist3
    return indices, distances


def segment_sums(frames: torch.Tensor, labels: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-cluster sums (codebook_size, dim) in float64, without atomics: frames are visited in label order, each
    cluster's rows summed by its own programs in a fixed order, so the result is reproducible."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    frames = frames.contiguous().float()
    dim = frames.shape[1]
    order = torch.argsort(labels, stable=True)
    offsets = torch.zeros(codebook_size + 1, dtype=torch.long, device=frames.device)
    offsets[1:] = torch.bincount(labels, minlength=codebook_size).cumsum(0)
    sums = torch.empty(codebook_size, dim, dtype=torch.float64, device=frames.device)
    block_d = min(128, max(16, triton.next_power_of_2(dim)))
    grid = (codebook_size, triton.cdiv(dim, block_d))
    _segment_sum_kernel[grid](frames, order, offsets, sums, frames.stride(0), DIM=dim, BLOCK_R=32, BLOCK_D=block_d)
    return sums
