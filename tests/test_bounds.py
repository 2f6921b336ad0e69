"""Hamerly's bounds in Lloyd (speechvq.codebook.bounds): the skipped frames keep exactly the labels a full
assignment gives them, the squared distances are the direct ones, and the skips happen."""

import importlib

import pytest
import torch

from speechvq import cpu_kernels
from speechvq.codebook.bounds import BoundedAssignment
from speechvq.codebook.kmeans import lloyd

CHUNK = 1000
kmeans_module = importlib.import_module("speechvq.codebook.kmeans")  # the package re-exports kmeans()
bounds_module = importlib.import_module("speechvq.codebook.bounds")


def full_assignment(frames, centroids):
    """What every frame gets without bounds: the fp32 GEMM labels (first of equal distances)."""
    labels, _ = cpu_kernels.nearest_cpu(frames, centroids, CHUNK)
    return labels


def drift(start, steps, scale, generator, big_jump_at=None):
    """A walk of centroid sets: small moves (frames get skipped), and one large jump of a single centroid (which
    must un-skip everyone whose lower bound it breaks)."""
    centroids, walk = start.clone(), []
    for step in range(steps):
        centroids = centroids + scale * torch.randn(centroids.shape, generator=generator)
        if step == big_jump_at:
            centroids[3] = centroids[7] + 0.01 * torch.randn(centroids.shape[1], generator=generator)
        walk.append(centroids.clone())
    return walk


def check_walk(frames, walk):
    assign = BoundedAssignment(frames, cpu_kernels.row_sq_norms(frames), CHUNK)
    for centroids in walk:
        labels, sq_dists = assign(centroids)
        assert torch.equal(labels, full_assignment(frames, centroids))
        direct = (frames.double() - centroids.double()[labels]).square().sum(dim=1)
        torch.testing.assert_close(sq_dists.double(), direct, rtol=1e-5, atol=1e-6)
    return assign


@pytest.mark.parametrize("dim,block_rows", [(2, 16384), (39, 16384), (200, 16384), (39, 700)])
def test_skipped_frames_keep_the_labels_of_a_full_assignment(dim, block_rows, monkeypatch):
    """Clustered frames and centroids that wander, one of them jumping onto another: every step's labels equal a
    full assignment's (a bound not lowered by the others' moves, a half gap not halved, or the own move used
    instead of the others' fails here), and most frames were skipped (a test that never skips proves nothing).
    block_rows 700: the test runs in 8 blocks over the worker threads (a block's rows listed without its offset
    fails here)."""
    monkeypatch.setattr(cpu_kernels, "MIN_BLOCK_ROWS", block_rows)
    g = torch.Generator().manual_seed(dim)
    centres = torch.randn(40, dim, generator=g) * 4
    frames = centres[torch.randint(40, (6000,), generator=g)] + torch.randn(6000, dim, generator=g)
    assign = check_walk(frames, drift(centres[:30], steps=12, scale=0.05, generator=g, big_jump_at=6))
    assert assign.skipped > 0.5 * assign.assigned


def test_exact_ties_go_to_the_first_centroid_as_without_bounds():
    """Integer coordinates: many frames are exactly as far from two centroids (and four centroids are there twice).
    A tie is never skipped on the bounds (the second distance equals the first), so the first centroid keeps it."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(-3, 4, (4000, 3), generator=g).float()
    grid = torch.randint(-3, 4, (12, 3), generator=g).float()
    walk = []
    for step in range(8):  # integer moves of a few centroids keep the ties exact
        grid = grid.clone()
        grid[step % 12] += torch.randint(-1, 2, (3,), generator=g).float()
        walk.append(torch.cat([grid, grid[:4]]))
    assign = check_walk(frames, walk)
    assert assign.skipped > 0


@pytest.mark.parametrize("offset", [100.0, 3000.0])
def test_large_norms_leave_a_margin_for_the_gemm_rounding(offset):
    """Frames far from the origin (MFCC c0 is in the hundreds), whose GEMM distances carry rounding errors larger
    than some frames' gap between the two nearest centroids: those must not be skipped on the bounds (without the
    rounding margins, offset 100 fails here, 196 frames in 6 steps: the full GEMM picks the other centroid of a
    near-tie. Each of the two margins alone still passes: the worst-case bound is far above the actual errors)."""
    g = torch.Generator().manual_seed(1)
    centroids = offset + torch.randn(20, 16, generator=g)
    frames = offset + torch.randn(20_000, 16, generator=g)
    walk = [centroids + 1e-4 * step * torch.randn(20, 16, generator=g) for step in range(6)]
    assign = check_walk(frames, walk)
    if offset == 100.0:
        assert assign.skipped > 0.3 * assign.assigned  # measured 0.53: the margin does not stop every skip


def test_the_rounding_bound_holds_for_the_gemm_distances():
    """The margin rests on |GEMM d^2 - exact d^2| <= 2 gamma_{D+3} (|x|^2 + |c|^2); it holds with room on
    large-norm frames (and a tenth of it does not: the bound is not vacuous)."""
    g = torch.Generator().manual_seed(2)
    frames = 500 + 50 * torch.randn(20_000, 64, generator=g)
    centroids = 500 + 50 * torch.randn(30, 64, generator=g)
    gemm = cpu_kernels._sweep(frames, centroids, CHUNK, None)[1].double()  # GEMM's, but near ties' direct
    labels = cpu_kernels.nearest_cpu(frames, centroids, CHUNK)[0]
    exact = (frames.double() - centroids.double()[labels]).square().sum(dim=1)
    bound = BoundedAssignment(frames, cpu_kernels.row_sq_norms(frames), CHUNK).gamma * 2
    bound = bound * (frames.double().square().sum(dim=1) + centroids.double().square().sum(dim=1).max())
    error = (gemm - exact).abs()
    assert (error <= bound).all()
    assert (error > bound / 1000).any()


@pytest.mark.parametrize("bounds_on", ["large codebook", "warm start"])
def test_lloyd_with_bounds_gives_the_codebook_of_lloyd_without(monkeypatch, bounds_on):
    """Lloyd's centroids are a function of the labels alone (no empty cluster here), so with and without bounds they
    must be equal to the bit; the inertias differ only in how the distances are summed. The bounds come on for a
    codebook of BOUNDS_MIN_CODEBOOK or more, or for a warm start (k-means' polish after its sample phase)."""
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(60, 24, generator=g) * 3
    frames = centres[torch.randint(60, (8000,), generator=g)] + torch.randn(8000, 24, generator=g)
    start = frames[torch.randperm(8000, generator=g)[:50]].clone()
    monkeypatch.setattr(kmeans_module, "BOUNDS_MIN_CODEBOOK", 10**9)
    without = lloyd(frames, start, max_iter=15, tol=0.0)
    if bounds_on == "large codebook":
        monkeypatch.setattr(kmeans_module, "BOUNDS_MIN_CODEBOOK", 1)
    made = []
    monkeypatch.setattr(bounds_module, "BoundedAssignment", lambda *a: made.append(BoundedAssignment(*a)) or made[-1])
    bounded = lloyd(frames, start, max_iter=15, tol=0.0, warm_start=bounds_on == "warm start")
    assert torch.equal(bounded.centroids, without.centroids)
    torch.testing.assert_close(bounded.inertia_history, without.inertia_history, rtol=1e-6, atol=0)
    assert len(bounded.inertia_history) > 5
    assert len(made) == 1 and made[0].skipped > 0  # the bounds ran and skipped frames


def test_kmeans_polishes_with_bounds_after_its_sample_phase(monkeypatch):
    """Enough frames for a sample phase: the full-data Lloyd starts warm and takes the bounds at K=20."""
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(30, 6, generator=g)[torch.randint(30, (30_000,), generator=g)] + torch.randn(30_000, 6)
    assert kmeans_module.sample_sizes(30_000, 20)[1] < 30_000
    made = []
    monkeypatch.setattr(bounds_module, "BoundedAssignment", lambda *a: made.append(BoundedAssignment(*a)) or made[-1])
    fit = kmeans_module.kmeans(frames, 20, generator=torch.Generator().manual_seed(0))
    assert [m.frames.shape[0] for m in made] == [30_000]
    assert fit.sample_iterations > 1  # reported, for scripts/bench.py's same-schedule peer
    assert kmeans_module.kmeans(frames[:5000], 20, generator=torch.Generator()).sample_iterations == 0


def test_nearest_two_of_chosen_rows_equals_nearest_two_of_those_rows_alone():
    """rows: the frames gathered a chunk at a time give what the same frames give as a tensor of their own."""
    g = torch.Generator().manual_seed(4)
    frames, centroids = torch.randn(5000, 40, generator=g), torch.randn(70, 40, generator=g)
    rows = torch.randperm(5000, generator=g)[:1234].sort().values
    chosen = cpu_kernels.nearest_two_cpu(frames, centroids, 300, rows=rows)
    alone = cpu_kernels.nearest_two_cpu(frames[rows], centroids, 300)
    for got, expected in zip(chosen, alone):
        assert torch.equal(got, expected)
    assert chosen[0].shape == (1234,)


@pytest.mark.parametrize("codebook_size", [1, 2, 3, 4, 5, 100])  # both remainders of the 2-row sweep
def test_nearest_two_gives_the_two_smallest_with_ties(codebook_size):
    g = torch.Generator().manual_seed(codebook_size)
    frames = torch.randint(-2, 3, (3000, 3), generator=g).float()
    centroids = torch.randint(-2, 3, (codebook_size, 3), generator=g).float()
    labels, best, second = cpu_kernels.nearest_two_cpu(frames, centroids, chunk_size=777)
    reference = (frames.double()[:, None] - centroids.double()[None]).square().sum(dim=2)
    ordered = reference.sort(dim=1).values
    assert torch.equal(labels, reference.argmin(dim=1))
    assert torch.equal(best.double(), ordered[:, 0])
    expected_second = ordered[:, 1] if codebook_size > 1 else torch.full((3000,), float("inf"), dtype=torch.float64)
    assert torch.equal(second.double(), expected_second)


def test_a_resumed_run_with_bounds_ends_where_the_uninterrupted_one_does(monkeypatch):
    """A resumed run starts without bounds (a full assignment) where the uninterrupted run skipped frames: the
    labels, the directly summed distances and so every later step must be the same, to the bit."""
    monkeypatch.setattr(kmeans_module, "BOUNDS_MIN_CODEBOOK", 1)

    class Recorder:
        def __init__(self, resume=None):
            self.states, self.resume = [], resume

        def load(self):
            return self.resume

        def save(self, state):
            self.states.append(state)

    g = torch.Generator().manual_seed(4)
    centres = torch.randn(50, 12, generator=g) * 3
    frames = centres[torch.randint(50, (6000,), generator=g)] + torch.randn(6000, 12, generator=g)

    def fit(checkpointer):
        return kmeans_module.kmeans(frames, 40, generator=torch.Generator().manual_seed(1), max_iter=30, tol=0.0,
                                    checkpointer=checkpointer)  # fmt: skip

    recorder = Recorder()
    reference = fit(recorder)
    assert len(recorder.states) >= 5
    resumed = fit(Recorder(resume=recorder.states[len(recorder.states) // 2]))
    assert torch.equal(resumed.centroids, reference.centroids)
    assert resumed.inertia_history == reference.inertia_history
