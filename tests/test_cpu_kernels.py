"""The CPU kernels behind nearest_codewords and Lloyd (speechvq.cpu_kernels), against plain torch."""

import subprocess
import sys

import pytest
import torch

from speechvq import cpu_kernels


@pytest.mark.parametrize("codebook_size", [1, 2, 3, 4, 5, 7, 8, 9, 100])  # every remainder of the 4-row sweep
def test_nearest_equals_torch_argmin_with_ties_to_the_first(codebook_size):
    """Small integer coordinates make many exact ties; torch.argmin keeps the first, and so must the kernel
    (a `<=` in the sweep, or a skipped row in the remainder loop, fails here)."""
    g = torch.Generator().manual_seed(codebook_size)
    frames = torch.randint(-2, 3, (5000, 3), generator=g).float()
    centroids = torch.randint(-2, 3, (codebook_size, 3), generator=g).float()
    centroids = torch.cat([centroids, centroids])  # every codeword twice: the second copy must never win
    labels, sq = cpu_kernels.nearest_cpu(frames, centroids, chunk_size=777)
    reference = (frames.double()[:, None] - centroids.double()[None]).square().sum(dim=2)
    assert torch.equal(labels, reference.argmin(dim=1))
    assert labels.max() < codebook_size
    assert torch.equal(sq.double(), reference.min(dim=1).values)  # integers: exact in fp32


def test_squared_distances_are_never_negative():
    """Frames equal to a codeword, with large norms: the expansion's rounding can go below zero; it is clamped."""
    g = torch.Generator().manual_seed(0)
    centroids = 1000 + torch.randn(50, 64, generator=g)
    labels, sq = cpu_kernels.nearest_cpu(centroids.repeat(3, 1), centroids, chunk_size=64)
    assert torch.equal(labels, torch.arange(50).repeat(3))
    assert (sq >= 0).all()  # without the clamp, some are negative here
    assert sq.max() < 1e-5 * centroids.square().sum(dim=1).max()  # fp32 rounding of ||x||^2 ~ 6e7, no more


def test_given_frame_norms_are_used():
    g = torch.Generator().manual_seed(1)
    frames, centroids = torch.randn(300, 8, generator=g), torch.randn(10, 8, generator=g)
    _, sq = cpu_kernels.nearest_cpu(frames, centroids, 128)
    _, shifted = cpu_kernels.nearest_cpu(frames, centroids, 128, frames_sq=cpu_kernels.row_sq_norms(frames) + 5.0)
    torch.testing.assert_close(shifted, sq + 5.0)


def test_row_norms_and_cluster_sums_equal_float64_torch():
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(20_000, 39, generator=g) * 10
    torch.testing.assert_close(
        cpu_kernels.row_sq_norms(frames).double(), frames.double().square().sum(dim=1), rtol=1e-5, atol=0
    )
    labels = torch.randint(0, 50, (20_000,), generator=g)
    labels[labels == 7] = 8  # cluster 7 is empty: its sum must stay zero
    expected = torch.zeros(50, 39, dtype=torch.float64).index_add_(0, labels, frames.double())
    sums = cpu_kernels.cluster_sums(frames, labels, 50)
    assert sums.dtype == torch.float64 and not sums[7].any()
    torch.testing.assert_close(sums, expected, rtol=1e-12, atol=1e-9)


def test_cluster_moves_are_the_change_in_cluster_sums_and_counts():
    """Relabelling moves each changed frame out of its old cluster and into its new one: the moves equal the new
    sums less the old (a sign swapped, or old and new labels swapped, fails), the counts change by whole frames,
    and the frames that keep their label are not touched."""
    g = torch.Generator().manual_seed(4)
    frames = torch.randn(9_000, 39, generator=g) * 10
    old = torch.randint(0, 30, (9_000,), generator=g)
    new = torch.where(torch.rand(9_000, generator=g) < 0.1, torch.randint(0, 30, (9_000,), generator=g), old)
    new[new == 29] = 3  # cluster 29 loses all its frames
    sums, counts, moved = cpu_kernels.cluster_moves(frames, old, new, 30)
    assert moved == int((old != new).sum()) and 500 < moved < 1_500
    assert torch.equal(counts, torch.bincount(new, minlength=30) - torch.bincount(old, minlength=30))
    expected = cpu_kernels.cluster_sums(frames, new, 30) - cpu_kernels.cluster_sums(frames, old, 30)
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-9)
    unmoved = cpu_kernels.cluster_moves(frames, old, old, 30)
    assert unmoved[2] == 0 and not unmoved[0].any() and not unmoved[1].any()


@pytest.mark.parametrize("dim,size", [(39, 100), (768, 500), (5, 3)])
def test_numba_and_torch_paths_give_the_same_labels(dim, size):
    """nearest_codewords takes torch's path (ATen min) in a process that has not loaded numba, for small calls;
    the units must not depend on which path a process took (the distances only within float rounding: the frame
    norms are summed in another order)."""
    from speechvq.distances import gemm_nearest

    g = torch.Generator().manual_seed(dim)
    frames, centroids = torch.randn(9000, dim, generator=g), torch.randn(size, dim, generator=g)
    torch_labels, torch_sq = gemm_nearest(frames, centroids, 4096)
    labels, sq = cpu_kernels.nearest_cpu(frames, centroids, 4096)
    assert torch.equal(labels, torch_labels)
    torch.testing.assert_close(sq, torch_sq, rtol=1e-6, atol=1e-5)
    frames.requires_grad_(True)  # a training step's frames (the encoder's quantizer) go through numpy too
    assert torch.equal(cpu_kernels.nearest_cpu(frames, centroids.requires_grad_(True), 4096)[0], labels)


def test_short_runs_stay_off_numba_and_long_ones_switch_without_changing_a_label():
    """A fresh process: numba's start-up is paid only once the process has asked for enough distances."""
    code = """
import sys, torch
from speechvq import quantize
quantize.CPU_KERNELS_MIN_DISTANCES = 3 * 2000 * 50
g = torch.Generator().manual_seed(0)
frames, centroids = torch.randn(2000, 16, generator=g), torch.randn(50, 16, generator=g)
labels = []
for _ in range(3):
    labels.append(quantize.nearest_codewords(frames, centroids)[0])
    print("speechvq.cpu_kernels" in sys.modules)
assert all(torch.equal(labels[0], other) for other in labels)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "True"]


def test_kernels_work_where_numba_has_nowhere_to_cache():
    """A read-only install without a home: numba finds no cache location; the kernels compile per process."""
    code = """
import numba.core.caching as caching
caching.CacheImpl._locator_classes = []
import torch
from speechvq import cpu_kernels
frames = torch.tensor([[0.0, 0.0], [10.0, 10.0], [9.0, 9.0]])
labels, _ = cpu_kernels.nearest_cpu(frames, torch.tensor([[10.0, 10.0], [0.0, 0.0]]), 2)
print(labels.tolist())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[1,", "0,", "0]"]


@pytest.mark.parametrize("offset", [300.0, 3000.0])
def test_labels_are_the_float64_argmin_where_fp32_gemm_order_is_wrong(offset):
    """Far from the origin the fp32 expansion |x|^2 - 2 x.c + |c|^2 rounds by more than some frames' gap between
    their two nearest centroids, and its argmin then picks the farther one (the teeth: it does here, on dozens of
    frames). Every path re-ranks those near ties in float64: the numba kernels (with and without the second
    distance, chosen rows), torch's path, and nearest_codewords; exact ties still go to the first centroid."""
    from speechvq.distances import gemm_gamma, gemm_nearest
    from speechvq.quantize import nearest_codewords

    g = torch.Generator().manual_seed(int(offset))
    centroids = offset + torch.randn(20, 16, generator=g)
    centroids = torch.cat([centroids, centroids[:3]])  # exact ties: the copies must never win
    frames = offset + torch.randn(30_000, 16, generator=g)
    exact = (frames.double()[:, None] - centroids.double()[None]).square().sum(dim=2)
    expected_sq, expected = exact.min(dim=1)
    fp32 = torch.addmm(centroids.square().sum(dim=1), frames, centroids.T, alpha=-2.0).argmin(dim=1)
    assert (fp32 != expected).sum() > 10
    # A GEMM distance is within 2 gamma (|x|^2 + max |c|^2) of the exact one.
    rounding = 2 * gemm_gamma(16) * (frames.double().square().sum(dim=1) + centroids.double().square().sum(1).max())
    for labels, sq in [
        cpu_kernels.nearest_cpu(frames, centroids, 1000),
        gemm_nearest(frames, centroids, 1000),
        nearest_codewords(frames, centroids),
    ]:
        assert torch.equal(labels, expected)
        assert ((sq.double() - expected_sq).abs() <= rounding).all()
    rows = torch.arange(0, 30_000, 3)
    labels, sq, second = cpu_kernels.nearest_two_cpu(frames, centroids, 1000, rows=rows)
    assert torch.equal(labels, expected[rows])
    others = exact[rows].scatter(1, labels[:, None], float("inf")).min(dim=1).values
    assert (second.double() - rounding[rows] <= others).all()  # a lower bound, as Lloyd's bounds take it


@pytest.mark.parametrize("with_rows", [False, True])
def test_worker_threads_split_chunks_without_losing_or_repeating_one(with_rows, monkeypatch):
    """One worker per torch thread draws chunks from a shared counter: every frame must be written once, by the
    same arithmetic whichever worker takes its chunk (a chunk skipped leaves torch.empty's garbage; one written at
    the wrong offset moves labels), and numpy's BLAS gets back its own thread count afterwards."""
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(cpu_kernels, "MIN_WORK_PER_WORKER", 1)  # three workers even for this small search
    seen_chunks = []
    real_even_chunks = cpu_kernels._even_chunks
    monkeypatch.setattr(
        cpu_kernels, "_even_chunks", lambda *a, **k: seen_chunks.append(real_even_chunks(*a, **k)) or seen_chunks[-1]
    )
    started = []
    real_run_workers = cpu_kernels._run_workers
    monkeypatch.setattr(cpu_kernels, "_run_workers", lambda work, n: started.append(n) or real_run_workers(work, n))

    g = torch.Generator().manual_seed(5)
    frames, centroids = torch.randn(5003, 24, generator=g) * 4, torch.randn(37, 24, generator=g) * 4
    rows = torch.randperm(5003, generator=g)[:4001] if with_rows else None

    def blas_threads():  # by library: numba's first call may load scipy's OpenBLAS too, which is not ours to restore
        return {pool["filepath"]: pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    blas_before = blas_threads()
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(cpu_kernels.nearest_two_cpu(frames, centroids, 97, rows=rows))
    finally:
        torch.set_num_threads(threads)
    assert started == [1, 3]
    assert seen_chunks[0] == seen_chunks[1] < 97  # spread into a multiple of 8 chunks, the same for both
    for one, three in zip(*results):
        assert torch.equal(one, three)
    chosen = frames if rows is None else frames[rows]
    exact = (chosen.double()[:, None] - centroids.double()[None]).square().sum(dim=2)
    assert torch.equal(results[1][0], exact.argmin(dim=1))
    torch.testing.assert_close(results[1][1].double(), exact.min(dim=1).values, rtol=1e-5, atol=1e-4)
    assert {path: count for path, count in blas_threads().items() if path in blas_before} == blas_before


def _sweep_in_a_forked_child(frames, centroids, answers):
    answers.put(cpu_kernels.nearest_cpu(frames, centroids, 97)[0].tolist())  # a list: no shared memory to outlive


def test_a_forked_child_starts_its_own_helper_threads(monkeypatch):
    """The helper threads outlive a sweep, but a forked child (a DataLoader worker) has none of them: its sweeps must
    start their own (a child that queued its chunks for the parent's helpers waited forever), and the helpers serve
    the next call here from the same pool (how many helpers a call starts depends on timing: ThreadPoolExecutor starts
    one only when none is idle, up to the pool's size)."""
    import multiprocessing
    import threading

    monkeypatch.setattr(cpu_kernels, "MIN_WORK_PER_WORKER", 1)
    g = torch.Generator().manual_seed(6)
    frames, centroids = torch.randn(3000, 16, generator=g), torch.randn(30, 16, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        expected = cpu_kernels.nearest_cpu(frames, centroids, 97)[0]
        helpers = {t for t in threading.enumerate() if t.name.startswith("speechvq-sweep")}
        assert helpers
        context = multiprocessing.get_context("fork")
        answers = context.Queue()
        child = context.Process(target=_sweep_in_a_forked_child, args=(frames, centroids, answers))
        child.start()
        try:
            got = answers.get(timeout=30)
        finally:
            child.join(timeout=30)
            child.kill()  # a child that hung must not outlive the test
        assert cpu_kernels.nearest_cpu(frames, centroids, 97)[0].equal(expected)
        after = {t for t in threading.enumerate() if t.name.startswith("speechvq-sweep")}
        assert helpers <= after and len(after) <= cpu_kernels._helper_count  # the same pool, no helper beyond its size
    finally:
        torch.set_num_threads(threads)
    assert child.exitcode == 0
    assert got == expected.tolist()


def test_lloyd_holds_torch_to_one_thread_but_not_its_sweeps(monkeypatch):
    """Between sweeps Lloyd's torch ops run on one thread (libgomp's spinning threads took a core from the next
    sweep); the sweeps still get one worker per thread the caller asked for, and the caller's setting comes back,
    also when an iteration fails."""
    from speechvq.codebook.kmeans import lloyd

    monkeypatch.setattr(cpu_kernels, "MIN_WORK_PER_WORKER", 1)
    seen = []
    real_in_blocks = cpu_kernels._in_blocks

    def spy(num_rows, block_rows, worker_task, workers):
        if isinstance(getattr(worker_task, "__self__", None), cpu_kernels._ChunkSweep):  # not a per-frame pass
            seen.append((workers, torch.get_num_threads()))
        return real_in_blocks(num_rows, block_rows, worker_task, workers)

    monkeypatch.setattr(cpu_kernels, "_in_blocks", spy)
    g = torch.Generator().manual_seed(4)
    frames = torch.randn(3000, 8, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        lloyd(frames, frames[:10].clone(), max_iter=3, tol=-1.0)
        assert seen and all(pair == (3, 1) for pair in seen)
        assert torch.get_num_threads() == 3
        monkeypatch.setattr(cpu_kernels, "cluster_sums", lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            lloyd(frames, frames[:10].clone(), max_iter=3, tol=-1.0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def test_cluster_sums_do_not_depend_on_the_thread_count(monkeypatch):
    """The frames are summed in blocks set by their count alone, and the blocks added in order: 1 and 3 threads
    give the same bits (a worker summing into the shared total, or blocks added as they finish, would not), and the
    sums are the float64 ones (a block skipped or taken twice fails)."""
    monkeypatch.setattr(cpu_kernels, "MIN_BLOCK_ROWS", 1000)
    g = torch.Generator().manual_seed(9)
    frames, labels = torch.randn(7001, 13, generator=g) * 100, torch.randint(0, 20, (7001,), generator=g)
    threads, sums = torch.get_num_threads(), []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            sums.append(cpu_kernels.cluster_sums(frames, labels, 21))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(sums[0], sums[1]) and not sums[0][20].any()
    expected = torch.zeros(21, 13, dtype=torch.float64).index_add_(0, labels, frames.double())
    torch.testing.assert_close(sums[0], expected, rtol=1e-12, atol=1e-9)
