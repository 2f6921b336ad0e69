import importlib
import math

import pytest
import torch

from speechvq.codebook import kmeans
from speechvq.codebook.kmeans import kmeans_plusplus, lloyd
from speechvq.quantize import nearest_codewords

kmeans_module = importlib.import_module("speechvq.codebook.kmeans")  # the package exports the function


def planted(num_clusters=12, per_cluster=400, dim=6, spread=30.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_clusters, dim, generator=g) * spread
    truth = torch.arange(num_clusters).repeat_interleave(per_cluster)
    points = centers[truth] + torch.randn(truth.numel(), dim, generator=g)
    perm = torch.randperm(truth.numel(), generator=g)
    return points[perm], truth[perm], centers


def contingency(a, b, n):
    table = torch.zeros(n, n, dtype=torch.long)
    table.index_put_((a, b), torch.ones_like(a), accumulate=True)
    return table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_clusters_exactly(seed):
    points, truth, centers = planted(seed=seed)
    fit = kmeans(points, 12, generator=torch.Generator().manual_seed(seed), n_init=2)
    labels, _ = nearest_codewords(points, fit.centroids)
    table = contingency(truth, labels, 12)
    # A perfect partition: every true cluster maps to exactly one code, and every code to one cluster.
    assert ((table > 0).sum(1) == 1).all() and ((table > 0).sum(0) == 1).all()
    matched = table.argmax(1)
    torch.testing.assert_close(fit.centroids[matched], centers, atol=0.3, rtol=0)
    assert fit.converged


def test_same_seed_same_codebook_and_different_seed_differs():
    points = torch.randn(5000, 8, generator=torch.Generator().manual_seed(0))
    a = kmeans(points, 20, generator=torch.Generator().manual_seed(7), max_iter=15)
    b = kmeans(points, 20, generator=torch.Generator().manual_seed(7), max_iter=15)
    c = kmeans(points, 20, generator=torch.Generator().manual_seed(8), max_iter=15)
    assert torch.equal(a.centroids, b.centroids) and a.inertia == b.inertia
    assert not torch.equal(a.centroids, c.centroids)


def test_inertia_never_increases_and_matches_assignment():
    points = torch.randn(4000, 5, generator=torch.Generator().manual_seed(1))
    fit = kmeans(points, 16, generator=torch.Generator().manual_seed(0), max_iter=50, tol=0)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(fit.inertia_history, fit.inertia_history[1:]))
    _, sq = nearest_codewords(points, fit.centroids)
    assert fit.inertia == pytest.approx(float(sq.double().sum()), rel=1e-5)
    brute = torch.cdist(points.double(), fit.centroids.double()).square().min(1).values.sum()
    assert fit.inertia == pytest.approx(float(brute), rel=1e-4)


def test_lloyd_totals_follow_the_labels_of_the_centroids_offered():
    """Each offered state's cluster totals are those of the labels its centroids give (the labels a resumed run
    starts from): counts exact, sums a fresh float64 sum's to rounding. Totals one step behind fail the counts.
    On frames whose values span many magnitudes the moved totals differ from a fresh sum in the last bits, which
    is why a checkpoint carries them instead of a resumed run summing afresh."""
    g = torch.Generator().manual_seed(3)
    points, _, _ = planted(num_clusters=10, per_cluster=300, dim=5, spread=4.0, seed=3)
    points = points * 10 ** torch.empty(points.shape[0], 1).uniform_(-4, 3, generator=g)
    offered = []
    lloyd(points, points[:16].clone(), max_iter=12, tol=-1.0, on_iteration=lambda c, h, t: offered.append((c, t)))
    assert len(offered) == 12
    from speechvq import cpu_kernels

    bits_differ = False
    for centroids, totals in offered:
        labels, _ = nearest_codewords(points, centroids)
        assert torch.equal(totals.counts, torch.bincount(labels, minlength=16))
        fresh = cpu_kernels.cluster_sums(points, labels, 16)
        torch.testing.assert_close(totals.sums, fresh, rtol=1e-12, atol=1e-9)
        bits_differ |= not torch.equal(totals.sums, fresh)
    assert bits_differ


def test_n_init_keeps_the_best_restart():
    # Restart r of kmeans(n_init=4) is what kmeans(n_init=1) gives when the same generator has already served r
    # restarts, so the four restarts can be reproduced one by one and the winner checked against them.
    points = torch.randn(3000, 4, generator=torch.Generator().manual_seed(2))
    shared = torch.Generator().manual_seed(0)
    restarts = [kmeans(points, 30, generator=shared, n_init=1, max_iter=5) for _ in range(4)]
    inertias = [r.inertia for r in restarts]
    winner = min(range(4), key=inertias.__getitem__)
    assert winner != 0 and len(set(inertias)) == 4  # the data must make "keep the first" a wrong answer
    best = kmeans(points, 30, generator=torch.Generator().manual_seed(0), n_init=4, max_iter=5)
    assert best.inertia == inertias[winner]
    assert torch.equal(best.centroids, restarts[winner].centroids)


def test_impossible_arguments_are_refused():
    points = torch.randn(100, 3)
    for kwargs in ({"chunk_size": 0}, {"chunk_size": -5}, {"n_init": 0}, {"precision": "half"}, {"max_iter": 0}):
        with pytest.raises(ValueError):
            kmeans(points, 4, generator=torch.Generator(), **kwargs)
    with pytest.raises(ValueError, match="CUDA"):  # TF32 does not exist on the CPU: refused, not silently exact
        kmeans(points, 4, generator=torch.Generator(), precision="fast")
    with pytest.raises(ValueError):
        kmeans(points, 0, generator=torch.Generator())


def test_empty_cluster_is_reseeded():
    far = torch.full((6, 2), 100.0) + torch.arange(6.0).unsqueeze(1)  # six distinct points
    points = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 10.0), far])
    # Two centroids far from everything never win a point: they must be re-seeded, not left dead.
    start = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-1e4, -1e4], [-2e4, 2e4]])
    fit = lloyd(points, start, max_iter=10, tol=0)
    labels, _ = nearest_codewords(points, fit.centroids)
    assert labels.unique().numel() == 4
    assert torch.isfinite(fit.centroids).all()


def test_kmeans_plusplus_picks_distinct_points_from_data():
    points, _, _ = planted(num_clusters=5, per_cluster=100, seed=3)
    seeds = kmeans_plusplus(points, 5, generator=torch.Generator().manual_seed(0))
    assert seeds.shape == (5, points.shape[1])
    # Greedy k-means++ on far-apart clusters puts one seed in each cluster.
    labels, _ = nearest_codewords(points, seeds)
    assert labels.unique().numel() == 5


def test_wide_frames_are_seeded_in_a_projection_with_one_seed_per_cluster():
    """Above kmeans.SEEDING_DIM dims the distances are measured in a random projection, but the seeds are frames
    (not projected points) and the far-apart clusters still get one seed each."""
    points, _, _ = planted(num_clusters=40, per_cluster=50, dim=300, seed=4)
    seeds = kmeans_plusplus(points, 40, generator=torch.Generator().manual_seed(0))
    assert seeds.shape == (40, 300)
    assert (seeds[:, None] == points[None]).all(dim=2).any(dim=1).all()  # each seed is one of the frames
    labels, _ = nearest_codewords(points, seeds)
    assert labels.unique().numel() == 40


def test_greedy_kmeans_plusplus_beats_plain_kmeans_plusplus():
    """Greedy k-means++ keeps, at each step, the candidate that lowers the potential most; on unclustered data
    its seeds have a clearly lower potential than plain k-means++ (one candidate, written out here) -- and
    keeping the worst candidate instead would be clearly higher."""

    def potential(points, seeds):
        return float(torch.cdist(points.double(), seeds.double()).square().min(1).values.sum())

    def plain(points, k, g):
        chosen = [int(torch.randint(points.shape[0], (1,), generator=g))]
        closest = (points - points[chosen[0]]).square().sum(1)
        for _ in range(1, k):
            chosen.append(int(torch.multinomial(closest.double(), 1, generator=g)))
            closest = torch.minimum(closest, (points - points[chosen[-1]]).square().sum(1))
        return points[chosen]

    points = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
    greedy = [
        potential(points, kmeans_plusplus(points, 20, generator=torch.Generator().manual_seed(s))) for s in range(8)
    ]
    reference = [potential(points, plain(points, 20, torch.Generator().manual_seed(100 + s))) for s in range(8)]
    assert sum(greedy) < 0.92 * sum(reference)  # measured: 0.83


@pytest.mark.parametrize("dim", [13, 39, 64])
def test_compiled_kmeans_plusplus_chooses_the_frames_the_torch_steps_choose(dim):
    """The CPU's compiled loop (cpu_kernels) and the torch ops CUDA runs (kmeans._greedy_rows) choose the same frames
    from the same draws: the same proportional draw, potential and greedy pick. Frames of many scales (MFCC-like: a
    large first dim) and a dim count not a multiple of four (the compiled dot products take four dims at a time)."""
    from speechvq import cpu_kernels
    from speechvq.codebook.kmeans import _greedy_rows

    g = torch.Generator().manual_seed(dim)
    space = (torch.randn(3000, dim, generator=g) * torch.logspace(2, -1, dim)).T.contiguous()
    first, draws = int(torch.randint(3000, (1,), generator=g)), torch.rand(59, 6, generator=g).double()
    compiled = cpu_kernels.kmeans_plusplus_rows(space, first, draws)
    assert compiled[0] == first
    assert torch.equal(compiled, _greedy_rows(space, first, draws))


def test_kmeans_plusplus_on_fewer_distinct_frames_than_centroids_takes_each_of_them_first():
    """Seven distinct frames repeated, twelve centroids: both implementations choose the seven first (a frame on a
    chosen one is at distance zero, give or take the rounding of |p|^2 + |x|^2 - 2 p.x, and cannot be drawn before a
    new one), then any frames; every index is a frame's."""
    from speechvq import cpu_kernels
    from speechvq.codebook.kmeans import _greedy_rows

    g = torch.Generator().manual_seed(0)
    space = torch.randn(7, 39, generator=g)[torch.randint(7, (500,), generator=g)].T.contiguous()
    first, draws = int(torch.randint(500, (1,), generator=g)), torch.rand(11, 6, generator=g).double()
    for rows in (cpu_kernels.kmeans_plusplus_rows(space, first, draws), _greedy_rows(space, first, draws)):
        assert rows.shape == (12,) and 0 <= rows.min() and rows.max() < 500
        assert space[:, rows[:7]].T.unique(dim=0).shape[0] == 7


def test_too_few_frames_is_an_error():
    with pytest.raises(ValueError, match="at least codebook_size"):
        kmeans(torch.randn(5, 3), 10, generator=torch.Generator())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_deterministic_and_agrees_with_cpu_quality():
    points, truth, _ = planted(seed=4)
    gpu = points.cuda()
    a = kmeans(gpu, 12, generator=torch.Generator("cuda").manual_seed(0))
    b = kmeans(gpu, 12, generator=torch.Generator("cuda").manual_seed(0))
    assert torch.equal(a.centroids, b.centroids)
    labels, _ = nearest_codewords(points, a.centroids.cpu())
    table = contingency(truth, labels, 12)
    assert ((table > 0).sum(1) == 1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_kmeans_is_reproducible_with_exact_sums_at_hubert_size():
    """precision=fast at D=768: the label-segment cluster sums equal float64 sums, and two runs give the same
    codebook bit for bit (no atomics left in the fast path), as good as the exact path's within TF32's reach."""
    from speechvq.gpu_kernels import segment_sums

    g = torch.Generator().manual_seed(5)
    centers = torch.randn(64, 768, generator=g)
    points = (
        centers[torch.randint(0, 64, (60_000,), generator=g)] + 0.3 * torch.randn(60_000, 768, generator=g)
    ).cuda()
    labels = torch.randint(0, 500, (points.shape[0],), generator=g).cuda()
    exact_sums = torch.zeros(500, 768, dtype=torch.float64).index_add_(0, labels.cpu(), points.cpu().double())
    assert torch.allclose(segment_sums(points, labels, 500).cpu(), exact_sums, rtol=1e-12, atol=1e-9)
    runs = [kmeans(points, 64, generator=torch.Generator("cuda").manual_seed(0), precision=p) for p in ("fast",) * 2]
    assert torch.equal(runs[0].centroids, runs[1].centroids)
    exact = kmeans(points, 64, generator=torch.Generator("cuda").manual_seed(0))
    # The fast path's own inertia comes from TF32 distances; score both codebooks with exact distances.
    fast_inertia = float(nearest_codewords(points, runs[0].centroids)[1].double().sum())
    assert fast_inertia <= exact.inertia * (1 + 1e-3)


def mfcc_like(num_frames=20000, dim=39, clusters=40, seed=0):
    """Frames with MFCC's trouble: c0 near a thousand, clusters a few units apart, so the fp32 expansion
    |x|^2 - 2 x.c + |c|^2 rounds by a sizeable share of the distances it computes."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=g) * 3
    centers[:, 0] += 1000
    return centers[torch.randint(clusters, (num_frames,), generator=g)] + torch.randn(num_frames, dim, generator=g)


def one_ulp_off(result: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    """Every element moved, up or down at random (a fixed pattern), by one ulp of `scale` (of itself by default): the
    products summed in another order, as another BLAS or CPU does, in place. For distances from addmm, the scale is
    the norms the GEMM's dot product cancels against (its rounding is an ulp of those, not of the small result)."""
    scale = (result if scale is None else scale.expand_as(result)).abs()
    ulp = scale.nextafter(torch.tensor(float("inf"))) - scale
    up = torch.rand(result.shape, generator=torch.Generator().manual_seed(result.numel())) < 0.5
    result.add_(torch.where(up, ulp, -ulp))


def ulp_off_addmm(addmm):
    """torch.addmm (base + alpha * a @ b, as the distance code calls it) with its products one ulp off."""

    def perturbed_addmm(base, *args, **kwargs):
        result = addmm(base, *args, **kwargs)
        if result.dtype == torch.float32 and result.ndim == 2:
            one_ulp_off(result, base)
        return result

    return perturbed_addmm


def test_the_codebook_does_not_follow_the_gemms_rounding(monkeypatch):
    """k-means with every distance GEMM one ulp off (numpy's in the CPU search, torch's addmm anywhere) makes the
    same codebook bytes, restart choice and iteration count: labels are the float64 argmin's, k-means++ measures
    distances in a fixed order of its own, and the stopping test and the restarts compare inertias computed from
    the cluster totals. On these frames a 1-ulp change of the dot products moves distances by a few thousandths, so
    k-means++ drawing from GEMM distances (as on CUDA) chooses other frames."""
    from speechvq import cpu_kernels

    frames = mfcc_like()

    def fit():
        return kmeans(frames, 100, generator=torch.Generator().manual_seed(3), n_init=2, max_iter=40, tol=1e-5)

    reference = fit()
    calls = []
    plain_dots, plain_addmm = cpu_kernels.codeword_dots, torch.addmm

    def perturbed_dots(codewords, chunk, out):
        plain_dots(codewords, chunk, out)
        one_ulp_off(torch.from_numpy(out))
        calls.append("numpy")

    monkeypatch.setattr(cpu_kernels, "codeword_dots", perturbed_dots)
    monkeypatch.setattr(torch, "addmm", ulp_off_addmm(plain_addmm))
    perturbed = fit()
    assert "numpy" in calls, "the perturbed GEMM was not used"
    assert perturbed.centroids.numpy().tobytes() == reference.centroids.numpy().tobytes()
    assert (perturbed.inertia, perturbed.num_iterations, perturbed.inertia_history) == (
        reference.inertia, reference.num_iterations, reference.inertia_history
    )  # fmt: skip
    # the perturbation is felt: the sum of the GEMM's distances, the old inertia, moves
    labels, plain_sq = nearest_codewords(frames, reference.centroids)
    monkeypatch.undo()
    _, sq = nearest_codewords(frames, reference.centroids)
    assert float(plain_sq.double().sum()) != float(sq.double().sum())


def test_kmeans_plusplus_on_gemm_distances_follows_the_gemms_rounding(monkeypatch):
    """The other side of the test above: torch's k-means++ steps (CUDA's, on GEMM distances) choose other frames
    when the GEMM is one ulp off, so the frames' trouble is real and the compiled steps' independence is not luck."""
    frames = mfcc_like()[:10000]
    space = frames.T.contiguous()
    draws = torch.rand(99, 2 + int(math.log(100)), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    plain = kmeans_module._greedy_rows(space, 0, draws)
    monkeypatch.setattr(torch, "addmm", ulp_off_addmm(torch.addmm))
    assert not torch.equal(kmeans_module._greedy_rows(space, 0, draws), plain)
