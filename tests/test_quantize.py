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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    frames, centroids = torch.randn(50000, 39, generator=g), torch.randn(100, 39, generator=g)
    cpu, _ = nearest_codewords(frames, centroids)
    gpu, _ = nearest_codewords(frames.cuda(), centroids.cuda())
    assert (cpu == gpu.cpu()).float().mean() > 0.9999


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_path_agrees_with_exact():
    g = torch.Generator().manual_seed(0)
    frames, centroids = torch.randn(100000, 768, generator=g).cuda(), torch.randn(500, 768, generator=g).cuda()
    exact, _ = nearest_codewords(frames, centroids)
    fast, _ = nearest_codewords(frames, centroids, precision="fast")
    assert (exact == fast).float().mean() >= 0.999
