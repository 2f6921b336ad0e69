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


def run_in_triton_interpreter(code: str) -> None:
    """Run code in a fresh Python with TRITON_INTERPRET=1 (Triton reads it at import); it must print "ok"."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_fused_triton_kernel_in_the_interpreter():
    """The CUDA kernel, run by Triton's CPU interpreter: labels equal the exact (float64) argmin."""
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
    run_in_triton_interpreter(code)


FP16_KERNEL_CHECK = """
import torch
from speechvq import gpu_kernels as gk
g = torch.Generator().manual_seed(0)
for n, d, k, block_k, block_d in [(300, 96, 37, None, 32), (257, 80, 20, 16, 32)]:
    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    x[5] *= 1e-6
    x[6] *= 1e4  # the per-frame scale at both ends of the range
    x[7] = c[3]
    # Near ties that fp16 products cannot separate: just past the midpoint of two codewords, towards the second.
    pairs = torch.randint(0, k, (60, 2), generator=g)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    x[100 : 100 + len(pairs)] = 0.5 * (c[pairs[:, 0]] + c[pairs[:, 1]]) + 1e-6 * (c[pairs[:, 1]] - c[pairs[:, 0]])
    ref = (x.double()[:, None] - c.double()[None]).square().sum(-1)
    stats = {}
    idx, dist = gk.fused_nearest_fp16(x, c, block_n=32, block_k=block_k, block_d=block_d, num_warps=4, stats=stats)
    assert torch.equal(idx, ref.argmin(1)), (idx != ref.argmin(1)).nonzero()
    assert ((dist.double() - ref.min(1).values).abs() <= 1e-5 * (1 + ref.min(1).values)).all()
    # Teeth: fp16 products alone get some near ties wrong, and exactly those are in doubt.
    book = gk.Fp16Codebook(c)
    first, _, doubt = gk._top2(x.contiguous(), book, False, 32, block_k or 64, block_d, 4)
    wrong = first != ref.argmin(1)
    assert wrong[100 : 100 + len(pairs)].any() and not (wrong & ~doubt).any(), (wrong.sum(), doubt.sum())
    assert stats["split"] >= int(wrong.sum()) and stats["split"] < n // 2, stats
    labels = torch.randint(0, k, (n,), generator=g)
    labels[labels == 3] = 4  # an empty cluster
    sums = gk.segment_sums(x, labels, k)
    assert sums.dtype == torch.float64 and not sums[3].any()
    assert torch.allclose(sums, torch.zeros(k, d, dtype=torch.float64).index_add_(0, labels, x.double()), rtol=1e-12)
print("ok")
"""


def test_fp16_kernel_and_segment_sums_in_the_interpreter():
    """The high-dimensional kernel (fp16 products, proven-bound re-rank) and the atomics-free cluster sums, run by
    Triton's CPU interpreter: labels equal the float64 argmin, also on near ties that fp16 alone gets wrong."""
    run_in_triton_interpreter(FP16_KERNEL_CHECK)


def test_tiles_shrink_when_the_card_refuses_their_shared_memory():
    """A tile the GPU cannot hold (seen on an H200 at D=64 K=500) is retried smaller: codebook tile first, then
    frame tile; at the smallest tiles the refusal is raised, not hidden."""
    from triton.runtime.errors import OutOfResources

    from speechvq.gpu_kernels import _launch_shrinking

    tried = []

    def launch(block_n, block_k):
        tried.append((block_n, block_k))
        if block_n * block_k > 64 * 32:
            raise OutOfResources(262144, 232448, "shared memory")
        return "launched"

    assert _launch_shrinking(launch, 256, 128) == "launched"
    assert tried == [(256, 128), (256, 64), (256, 32), (256, 16), (128, 16)]

    def never(block_n, block_k):
        raise OutOfResources(1, 0, "shared memory")

    with pytest.raises(OutOfResources):
        _launch_shrinking(never, 32, 32)


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


@pytest.mark.parametrize("num_codebooks", [1, 3])
def test_unit_file_lines_are_what_json_dumps_writes(num_codebooks):
    """The quantize stage assembles its .km and JSONL lines from each code's text made once; they must be byte for
    byte what str() and json.dumps(record, separators=(",", ":")) give (odd ids, an empty utterance, repeats)."""
    import json

    from speechvq.featstore import StoredUtterance
    from speechvq.fileio import deduplicate_rows
    from speechvq.stages.quantize import _part_texts

    generator = torch.Generator().manual_seed(0)
    lengths = [7, 0, 30, 1]
    units = torch.randint(0, 4, (sum(lengths), num_codebooks), generator=generator) * 25  # runs and 2-digit codes
    ids = ["plain", 'quo"te\\back', "naïve 日本", "tab\there"]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    entries = [StoredUtterance(u, n, 0, o) for u, n, o in zip(ids, lengths, offsets)]
    rate = 100 / 3
    got = _part_texts(entries, units, rate, True, 100)

    def dumps(record):
        return json.dumps(record, separators=(",", ":")) + "\n"

    expected_streams = [[], [], []][:num_codebooks]
    records, dedup_records = [], []
    for entry in entries:
        utt = units[entry.offset : entry.offset + entry.num_frames]
        for stream in range(num_codebooks):
            expected_streams[stream].append(" ".join(map(str, utt[:, stream].tolist())) + "\n")
        listed = utt[:, 0].tolist() if num_codebooks == 1 else utt.T.tolist()
        record = {"id": entry.utt_id, "units": listed, "num_frames": entry.num_frames, "frame_rate_hz": rate}
        if num_codebooks > 1:
            record["unit_offsets"] = [stream * 100 for stream in range(num_codebooks)]
        records.append(dumps(record))
        values, durations = deduplicate_rows(utt)
        listed = values[:, 0].tolist() if num_codebooks == 1 else values.T.tolist()
        dedup_records.append(dumps({"id": entry.utt_id, "units": listed, "durations": durations.tolist()}))
    assert got == expected_streams + [records, dedup_records]
    assert _part_texts(entries, units, rate, False, 100) == expected_streams + [records]


def test_default_block_shrinks_for_narrow_frames_and_large_codebooks_without_changing_a_label():
    """Narrow frames with K=1000 get 512-frame distance blocks (K x chunk distances near 2 MiB); the labels are those
    of one block over all frames and of the float64 argmin."""
    from speechvq.quantize import default_chunk_size

    cpu = torch.device("cpu")
    assert [default_chunk_size(cpu, 39, k) for k in (100, 250, 500, 1000, 4000)] == [4096, 2048, 1024, 512, 512]
    assert default_chunk_size(cpu, 768, 1000) == 4096 and default_chunk_size(torch.device("cuda"), 39, 1000) == 1 << 19
    g = torch.Generator().manual_seed(5)
    frames, centroids = torch.randn(3000, 39, generator=g), torch.randn(1000, 39, generator=g)
    labels, _ = nearest_codewords(frames, centroids)
    assert torch.equal(labels, nearest_codewords(frames, centroids, chunk_size=3000)[0])
    assert torch.equal(labels, torch.cdist(frames.double(), centroids.double()).argmin(dim=1))
