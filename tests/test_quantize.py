import pytest
import torch

from speechvq.quantize import nearest_codewords


def brute_force(frames, centroids):
    d = (frames.double()[:, None, :] - centroids.double()[None]).square().sum(-1)
    return d.min(1)


@pytest.mark.parametrize("dim,size", [(39, 100), (3, 7), (128, 50)])
def test_matches_exact_argmin(dim, size):
    g = torch.Generator().manual_seed(dim)
    frames = torch.randn(3000, dim, generator=g)
    centroids = torch.randn(size, dim, generator=g)
    idx, sq = nearest_codewords(frames, centroids)
    ref_sq, ref_idx = brute_force(frames, centroids)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sq.double(), ref_sq, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 1000, 100000])
def test_chunk_size_does_not_change_units(chunk):
    g = torch.Generator().manual_seed(0)
    frames, centroids = torch.randn(2500, 13, generator=g), torch.randn(40, 13, generator=g)
    full, _ = nearest_codewords(frames, centroids, chunk_size=1 << 20)
    chunked, _ = nearest_codewords(frames, centroids, chunk_size=chunk)
    assert torch.equal(full, chunked)


def test_empty_input_and_dim_mismatch():
    idx, sq = nearest_codewords(torch.zeros(0, 4), torch.randn(3, 4))
    assert idx.shape == sq.shape == (0,)
    with pytest.raises(ValueError, match="dim"):
        nearest_codewords(torch.zeros(2, 4), torch.randn(3, 5))


def resolvable(frames, centroids, margin=1e-5):
    """float64 argmin, and a mask of the frames whose two best float64 distances differ by more than fp32 can
    blur (margin x ||x|| x max||c||): on those, any fp32-accurate method must pick the float64 winner."""
    d = torch.cdist(frames.double(), centroids.double()).square()
    top2 = d.topk(2, dim=1, largest=False).values
    scale = frames.double().norm(dim=1) * centroids.double().norm(dim=1).max()
    return d.argmin(1), (top2[:, 1] - top2[:, 0]) > margin * scale


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "dim,size,precision", [(39, 100, "exact"), (64, 500, "exact"), (768, 500, "exact"), (768, 500, "fast")]
)
def test_cuda_labels_equal_the_float64_argmin(dim, size, precision):
    """Equality, not agreement: every frame outside float rounding's reach gets the float64 label. The fused
    Triton kernel (dim <= 64) must use 3xTF32 products; with single TF32 products this fails."""
    g = torch.Generator().manual_seed(dim + size)
    frames, centroids = torch.randn(200_000, dim, generator=g), torch.randn(size, dim, generator=g)
    reference, clear = resolvable(frames, centroids)
    assert clear.float().mean() > 0.99
    labels, _ = nearest_codewords(frames.cuda(), centroids.cuda(), precision=precision)
    labels = labels.cpu()
    assert torch.equal(labels[clear], reference[clear]), int((labels[clear] != reference[clear]).sum())
    # The check has teeth: plain TF32 products get some of these frames wrong.
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        c = centroids.cuda()
        tf32 = torch.addmm(c.square().sum(1), frames.cuda(), c.T, alpha=-2.0).argmin(1).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert (tf32[clear] != reference[clear]).any()


def test_fused_triton_kernel_in_the_interpreter():
    """The CUDA kernel, run by Triton's CPU interpreter: labels equal the exact (float64) argmin."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from speechvq.gpu_kernels import fused_nearest\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for n, d, k in [(700, 39, 100), (129, 5, 3), (300, 64, 70)]:\n"
        "    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)\n"
        "    idx, dist = fused_nearest(x, c)\n"
        "    ref = (x.double()[:, None] - c.double()[None]).square().sum(-1)\n"
        "    assert torch.equal(idx, ref.argmin(1)), (n, d, k)\n"
        "    assert (dist.double() - ref.min(1).values).abs().max() < 1e-3\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_precision_argument_is_checked():
    with pytest.raises(ValueError, match="precision"):
        nearest_codewords(torch.zeros(2, 3), torch.zeros(2, 3), precision="half")
    for precision in ("fast", "tf32"):  # TF32 modes need CUDA: refused on the CPU, never silently exact
        with pytest.raises(ValueError, match="CUDA"):
            nearest_codewords(torch.zeros(2, 3), torch.zeros(2, 3), precision=precision)


@pytest.mark.parametrize("chunk", [0, -5, 2.5, True])
def test_impossible_chunk_size_is_refused(chunk):
    # A chunk loop that never runs would return torch.empty garbage as units.
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_codewords(torch.randn(10, 3), torch.randn(4, 3), chunk_size=chunk)


def test_kmeans_units_pass_their_precision_and_chunk_size_on():
    from speechvq.codebook import Codebook
    from speechvq.units import KMeansUnits

    g = torch.Generator().manual_seed(0)
    frames, centroids = torch.randn(500, 6, generator=g), torch.randn(9, 6, generator=g)
    codebook = Codebook(centroids=centroids, feature_config={"name": "x"}, frame_rate_hz=100.0)
    _, reference = brute_force(frames, centroids)
    assert torch.equal(KMeansUnits(codebook, chunk_size=7).assign(frames)[:, 0], reference)
    with pytest.raises(ValueError, match="CUDA"):  # "fast" reaches nearest_codewords, which refuses it on CPU
        KMeansUnits(codebook, precision="fast").assign(frames)
    with pytest.raises(ValueError, match="chunk_size"):
        KMeansUnits(codebook, chunk_size=-5).assign(frames)
