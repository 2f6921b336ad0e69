"""GPU part of the benchmark suite: assignment, Lloyd iterations, batched MFCC and end to end on one GPU.

Run through scripts/bench_gpu.sh (prints the table, writes JSON). --smoke runs the same code on the CPU at
tiny sizes so the script itself can be checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from speechvq.codebook.kmeans import lloyd  # noqa: E402
from speechvq.config import FeatureConfig  # noqa: E402
from speechvq.distances import gemm_nearest  # noqa: E402
from speechvq.features import build_extractor  # noqa: E402
from speechvq.quantize import nearest_codewords  # noqa: E402

ROWS: list[dict] = []


def record(section: str, method: str, ms: float, **extra) -> None:
    ROWS.append({"section": section, "method": method, "ms": ms, **extra})
    details = "  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    print(f"  {section:<26} {method:<46} {ms:9.3f} ms  {details}", flush=True)


def timed(fn, device, repeats=5, warmup=2):
    """Median wall time in ms of fn() (CUDA-synchronized), and its last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2], out


def truth_on_subset(frames, centroids, rows=200_000):
    sub = frames[:rows].double()
    return torch.cdist(sub, centroids.double()).argmin(1)


def plain_torch_argmin(frames, centroids, chunk, tf32: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        c_sq = centroids.square().sum(1)
        return torch.cat(
            [
                torch.addmm(c_sq, frames[s : s + chunk], centroids.T, alpha=-2).argmin(1)
                for s in range(0, frames.shape[0], chunk)
            ]
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def make_data(device, n, dim, k, clustered: bool):
    """Gaussian frames with codewords at data points (+0.1), or clustered frames (2k centres, noise 0.5) with
    codewords near centres: close second-best codewords, the hard case for a re-rank margin."""
    g = torch.Generator(device=device).manual_seed(0)
    if not clustered:
        frames = torch.randn(n, dim, device=device, generator=g)
        return frames, frames[torch.randperm(n, device=device, generator=g)[:k]].clone() + 0.1
    centres = torch.randn(2 * k, dim, device=device, generator=g)
    frames = centres[torch.randint(0, 2 * k, (n,), device=device, generator=g)]
    frames += 0.5 * torch.randn(n, dim, device=device, generator=g)
    return frames, centres[:k] + 0.05 * torch.randn(k, dim, device=device, generator=g)


def bench_assign(device, n, dim, k, chunk, clustered=False):
    frames, centroids = make_data(device, n, dim, k, clustered)
    section = f"assign N={n} D={dim} K={k}" + (" clustered" if clustered else "")
    truth = truth_on_subset(frames, centroids)
    ms, ref = timed(lambda: gemm_nearest(frames, centroids, chunk)[0], device)
    record(
        section,
        "speechvq exact GEMM path (fp32)",
        ms,
        frames_per_s=n / ms * 1e3,
        agree_fp64=float((ref[: truth.numel()] == truth).double().mean()),
    )
    if device.type == "cuda":
        ms, labels = timed(lambda: plain_torch_argmin(frames, centroids, chunk, tf32=True), device)
        record(
            section,
            "plain torch tf32 addmm+argmin",
            ms,
            frames_per_s=n / ms * 1e3,
            agree_exact=float((labels == ref).double().mean()),
        )
    if device.type != "cuda":
        return  # the smoke test stops here: the other precisions are TF32 / Triton, on CUDA only
    ms, labels = timed(lambda: nearest_codewords(frames, centroids, chunk, "tf32")[0], device)
    record(
        section,
        "speechvq nearest_codewords(precision=tf32)",
        ms,
        frames_per_s=n / ms * 1e3,
        agree_exact=float((labels == ref).double().mean()),
    )
    ms, labels = timed(lambda: nearest_codewords(frames, centroids, chunk, "fast")[0], device)
    stats = {}
    if dim > 64 and device.type == "cuda":
        from speechvq.gpu_kernels import fused_nearest_fp16

        fused_nearest_fp16(frames, centroids, stats=stats)
    record(
        section,
        "speechvq nearest_codewords(precision=fast)",
        ms,
        frames_per_s=n / ms * 1e3,
        agree_exact=float((labels == ref).double().mean()),
        agree_fp64=float((labels[: truth.numel()] == truth).double().mean()),
        **{f"frames_{key}": value for key, value in stats.items()},
    )
    ms, labels = timed(lambda: nearest_codewords(frames, centroids, chunk)[0], device)
    record(
        section,
        "speechvq nearest_codewords (default)",
        ms,
        frames_per_s=n / ms * 1e3,
        agree_exact=float((labels == ref).double().mean()),
        agree_fp64=float((labels[: truth.numel()] == truth).double().mean()),
    )


def bench_fused_variants(device, n, dim, k):
    """Block sizes and product precisions of the fused low-dimensional kernel, each with its agreement."""
    from speechvq.gpu_kernels import fused_nearest

    g = torch.Generator(device=device).manual_seed(0)
    frames = torch.randn(n, dim, device=device, generator=g)
    centroids = frames[torch.randperm(n, device=device, generator=g)[:k]].clone() + 0.1
    truth = truth_on_subset(frames, centroids)
    for precision in ("ieee", "tf32x3"):
        for block_n, block_k, warps in ((128, 64, 4), (256, 64, 8), (256, 128, 8)):

            def run(p=precision, bn=block_n, bk=block_k, w=warps):
                return fused_nearest(frames, centroids, block_n=bn, block_k=bk, precision=p, num_warps=w)[0]

            label = f"{precision} BLOCK_N={block_n} BLOCK_K={block_k} warps={warps}"
            time_variant(f"fused N={n} D={dim} K={k}", label, run, device, truth, n)


def time_variant(section, label, run, device, truth, n):
    """One kernel configuration: its time and agreement with float64, or the compiler's refusal (not fatal)."""
    try:
        ms, labels = timed(run, device)
    except Exception as exc:
        print(f"  {section} {label}: {type(exc).__name__}: {exc}"[:200])
        return
    agree = float((labels[: truth.numel()] == truth).double().mean())
    record(section, label, ms, frames_per_s=n / ms * 1e3, agree_fp64=agree)


def bench_fp16_variants(device, n, dim, k):
    """Tile shapes of the fused fp16 top-2 kernel (D > 64), each with its agreement with float64."""
    from speechvq.gpu_kernels import fused_nearest_fp16

    frames, centroids = make_data(device, n, dim, k, clustered=False)
    truth = truth_on_subset(frames, centroids)
    configs = [(64, 512, 64, 8), (128, 256, 64, 8), (64, 256, 64, 4), (128, 128, 64, 4), (128, 512, 32, 8),
               (128, 512, 64, 16), (64, 128, 128, 4), (256, 128, 64, 8)]  # fmt: skip
    for block_n, block_k, block_d, warps in configs:

        def run(bn=block_n, bk=block_k, bd=block_d, w=warps):
            return fused_nearest_fp16(frames, centroids, block_n=bn, block_k=bk, block_d=bd, num_warps=w)[0]

        label = f"BLOCK_N={block_n} BLOCK_K={block_k} BLOCK_D={block_d} warps={warps}"
        time_variant(f"fused fp16 N={n} D={dim} K={k}", label, run, device, truth, n)


def bench_lloyd(device, n, dim, k, chunk):
    g = torch.Generator(device=device).manual_seed(1)
    frames = torch.randn(n, dim, device=device, generator=g)
    start = frames[torch.randperm(n, device=device, generator=g)[:k]].clone()
    for precision in ("exact", "fast") if device.type == "cuda" else ("exact",):

        def one_iteration(precision=precision):
            return lloyd(frames, start, max_iter=1, tol=-1.0, chunk_size=chunk, precision=precision)

        # lloyd(max_iter=1) = one assignment to start + update + one assignment: report per-iteration cost as
        # (time of 3 iterations - time of 1) / 2, which removes the initial assignment.
        ms1, _ = timed(one_iteration, device, repeats=3)
        ms3, _ = timed(
            lambda precision=precision: lloyd(
                frames, start, max_iter=3, tol=-1.0, chunk_size=chunk, precision=precision
            ),
            device,
            repeats=3,
        )
        record(f"Lloyd N={n} D={dim} K={k}", f"one iteration, precision={precision}", (ms3 - ms1) / 2)
    if device.type != "cuda":
        return
    # Where an iteration's time goes (fast path): assignment, then the cluster sums by several methods.
    section = f"Lloyd parts N={n} D={dim} K={k}"
    frames_sq = frames.square().sum(1)
    ms, (labels, _) = timed(lambda: nearest_codewords(frames, start, chunk, "tf32", frames_sq), device)
    record(section, "assignment, tf32, norms precomputed", ms)
    ms, _ = timed(lambda: torch.zeros(k, dim, device=device).index_add_(0, labels, frames), device)
    record(section, "cluster sums, index_add_ (atomics)", ms)
    if device.type == "cuda":
        from speechvq.gpu_kernels import segment_sums

        ms, (labels16, _) = timed(lambda: nearest_codewords(frames, start, chunk, "fast", frames_sq), device)
        record(
            section,
            "assignment, fast (fused fp16 top-2 + re-rank)",
            ms,
            agree_tf32=float((labels16 == labels).double().mean()),
        )
        ms, sums = timed(lambda: segment_sums(frames, labels, k), device)
        exact = torch.zeros(k, dim, dtype=torch.float64, device=device).index_add_(0, labels, frames.double())
        record(
            section, "cluster sums, segment_sums (sorted, float64)", ms, max_abs_err=float((sums - exact).abs().max())
        )

    def one_hot_tf32():
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            sums = torch.zeros(k, dim, device=device)
            for s in range(0, n, 1 << 18):
                sums += torch.nn.functional.one_hot(labels[s : s + (1 << 18)], k).float().T @ frames[s : s + (1 << 18)]
            return sums
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous

    ms, _ = timed(one_hot_tf32, device)
    record(section, "cluster sums, one-hot GEMM (tf32)", ms)
    order = torch.argsort(labels)
    ms, _ = timed(
        lambda: torch.segment_reduce(frames[order], "sum", lengths=torch.bincount(labels, minlength=k)), device
    )
    record(section, "cluster sums, sort + segment_reduce (gather included)", ms)


def bench_kmeans_fit(device, n, dim, k):
    """A whole k-means fit (precision=fast, one restart, at most 20 iterations): the figure SCALING.md projects."""
    from speechvq.codebook import kmeans

    frames, _ = make_data(device, n, dim, k, clustered=True)
    start = time.perf_counter()
    result = kmeans(frames, k, generator=torch.Generator(device=device).manual_seed(0), max_iter=20, precision="fast")
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1e3
    record(
        f"k-means fit N={n} D={dim} K={k}",
        "precision=fast, n_init=1, max_iter=20",
        ms,
        iterations=result.num_iterations,
    )


def bench_mfcc(device, seconds):
    from conftest import speechlike

    extractor = build_extractor(FeatureConfig())
    waves = [torch.from_numpy(speechlike(10.0, 16000, i)).to(device) for i in range(int(seconds // 10))]
    audio_s = 10.0 * len(waves)
    with torch.inference_mode():
        ms, _ = timed(lambda: extractor.extract_batch(waves), device, repeats=3, warmup=1)
    record(f"mfcc_hubert batched ({audio_s:.0f} s)", "speechvq extract_batch", ms, realtime_factor=audio_s / ms * 1e3)


def bench_end_to_end(device, minutes, workers):
    import numpy as np
    import soundfile
    from conftest import speechlike

    from speechvq import pipeline
    from speechvq.codebook import Codebook
    from speechvq.config import CodebookConfig, DataConfig, RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        total = 0.0
        for index in range(int(minutes * 60 / 15)):
            duration = 15 * float(rng.uniform(0.8, 1.2))
            soundfile.write(tmp / f"u{index:05d}.wav", speechlike(duration, 16000, index % 97), 16000, subtype="PCM_16")
            total += duration
        codebook = Codebook(torch.randn(100, 39) * 10, FeatureConfig().to_dict(), 100.0).save(tmp / "cb.safetensors")
        config = RunConfig(
            data=DataConfig(path=str(tmp), alignments=None, num_workers=workers, batch_seconds=600),
            codebook=CodebookConfig(path=str(codebook)),
            stages=["features", "quantize"],
            device=str(device),
        )
        pipeline.run(config, tmp / "warmup")  # compiles the Triton kernel once (cached on disk after that)
        start = time.perf_counter()
        result = pipeline.run(config, tmp / "run")
        seconds = time.perf_counter() - start
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.stage_seconds.items())
        record(
            f"end to end ({total / 60:.0f} min WAV)",
            f"decode workers={workers}, {stages}",
            seconds * 1e3,
            realtime_factor=total / seconds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-end-to-end", action="store_true", help="where no audio I/O library is installed")
    parser.add_argument("--only", help="comma-separated section numbers, in the order main lists them")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke test)"
    print(f"device: {name}; torch {torch.__version__}")
    n_big = 20_000 if args.smoke else 4_000_000
    chunk = 8192 if args.smoke else 1 << 19
    started = time.perf_counter()
    sections = [
        lambda: bench_assign(device, n_big, 768, 500, chunk),
        lambda: bench_assign(device, n_big, 768, 500, chunk, clustered=True),
        lambda: bench_assign(device, n_big, 39, 100, chunk),
    ]
    if device.type == "cuda":
        sections += [
            lambda: bench_fp16_variants(device, n_big, 768, 500),
            lambda: bench_fused_variants(device, n_big, 39, 100),
        ]
    sections += [
        lambda: bench_lloyd(device, n_big, 768, 500, chunk),
        lambda: bench_mfcc(device, 60 if args.smoke else 3600),
    ]
    if not args.skip_end_to_end:
        sections.append(lambda: bench_end_to_end(device, 1 if args.smoke else 30, workers=1 if args.smoke else 12))
    if device.type == "cuda":
        sections += [
            lambda: bench_lloyd(device, n_big, 39, 500, chunk),
            lambda: bench_kmeans_fit(device, n_big, 768, 500),
        ]
        sections += [lambda: bench_kmeans_fit(device, n_big, 39, 500)]
    if args.only:
        sections = [sections[int(i)] for i in args.only.split(",")]
    for section in sections:
        try:
            section()
        except Exception:  # one failing section is reported; the others still run
            traceback.print_exc()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": ROWS}, indent=2))


if __name__ == "__main__":
    main()
