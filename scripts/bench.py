"""speechvq against the tools users would otherwise pick, stage by stage, on the same data in one run.

  features    mfcc_hubert batched  vs  fairseq recipe (kaldi.mfcc + compute_deltas per utterance)  vs  librosa
  k-means     speechvq  vs  MiniBatchKMeans (fairseq settings)  vs  faiss.Kmeans at the same iteration count
  Lloyd       speechvq  vs  faiss.Kmeans, the same iterations from the same start centroids
  assignment  speechvq  vs  fairseq ApplyKmeans (numpy)  vs  faiss.IndexFlatL2
  end to end  decode -> mfcc_hubert -> units, real-time factor and peak RSS; RSS at 1,000 vs 10,000 files

Needs the [bench] extra (scikit-learn, faiss-cpu). Prints a table and writes JSON (--json).
Usage: python scripts/bench.py [--json bench_results/bench.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import speechlike  # noqa: E402  the same synthetic speech the tests use

from speechvq.codebook import kmeans  # noqa: E402
from speechvq.codebook.kmeans import lloyd  # noqa: E402
from speechvq.config import DataConfig, FeatureConfig  # noqa: E402
from speechvq.features import build_extractor  # noqa: E402
from speechvq.quantize import nearest_codewords  # noqa: E402

ROWS: list[dict] = []


def record(section: str, method: str, seconds: float, **extra) -> None:
    ROWS.append({"section": section, "method": method, "seconds": seconds, **extra})
    details = "  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    print(f"  {section:<22} {method:<44} {seconds:8.3f} s  {details}", flush=True)


# Idle time before each timed call. After a call, OpenBLAS' threads (faiss, numpy) busy-wait for about 2^28 cycles
# each before they sleep, and when the next call keeps both cores busy they take that CPU time from it: measured on
# the 2-core AMD EPYC, 10 Lloyd iterations at D=39 K=100 took 0.51-0.53 s right after faiss against 0.25 s after a
# pause (faiss: 0.28-0.44 s either way). The pause lets every method start on a quiet machine, as it would alone.
QUIET_S = 0.5


def interleaved(methods: dict, repeats: int) -> dict:
    """Every method once per round, `repeats` rounds, so drift of a shared machine hits all methods alike; each
    timed call starts after QUIET_S of idle time. Returns {name: (median seconds, min, max, last output, the
    seconds of each round)}."""
    times = {name: [] for name in methods}
    outputs = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            time.sleep(QUIET_S)
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t), max(t), outputs[name], t) for name, t in times.items()}


def speedups(peer_rounds: list[float], our_rounds: list[float]) -> dict:
    """A peer's median time over ours, and the range of the same ratio round by round (the rounds are interleaved,
    so each ratio compares runs minutes apart at most)."""
    ratios = [peer / ours for peer, ours in zip(peer_rounds, our_rounds)]
    return {
        "speechvq_speedup": statistics.median(peer_rounds) / statistics.median(our_rounds),
        "speedup_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
    }


def machine() -> dict:
    """CPU model and vendor, SIMD level, torch's BLAS and the BLAS libraries numpy / faiss load, threads."""
    info = {"cpu": platform.processor() or platform.machine(), "vendor": "?", "simd": [], "cpus": os.cpu_count()}
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if v}
        info["cpu"], info["vendor"] = field.get("model name", info["cpu"]), field.get("vendor_id", "?")
        info["simd"] = [
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in field.get("flags", "").split()
        ]
    except OSError:
        pass
    config = torch.__config__.show()
    info["torch_blas"] = next(
        (line.split("=", 1)[1].strip(" ,") for line in config.split(",") if "BLAS_INFO" in line), "?"
    )
    info["torch_mkl"] = torch.backends.mkl.is_available()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["torch_threads"] = torch.get_num_threads()
    try:
        import faiss  # noqa: F401  loads its BLAS, so threadpoolctl lists it
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for p in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl / faiss not installed"
    return info


def inertia(frames: torch.Tensor, centroids) -> float:
    _, sq = nearest_codewords(frames, torch.as_tensor(np.asarray(centroids), dtype=torch.float32))
    return float(sq.double().sum())


def record_codebooks(section: str, frames: torch.Tensor, results: dict) -> float:
    """One row per method of an interleaved run that returns centroids (speechvq's first): time, range, inertia on
    all frames, and each peer's time over speechvq's. Returns speechvq's median time."""
    t_ours, _, _, _, ours = next(iter(results.values()))
    for name, (median, low, high, centroids, rounds) in results.items():
        extra = {} if name.startswith("speechvq") else speedups(rounds, ours)
        record(section, name, median, range_s=f"{low:.3f}-{high:.3f}", inertia=inertia(frames, centroids), **extra)
    return t_ours


def exact_labels(frames: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Ground truth: float64 argmin, chunked."""
    out = []
    c64 = centroids.double()
    for start in range(0, frames.shape[0], 8192):
        x = frames[start : start + 8192].double()
        out.append(torch.cdist(x, c64).argmin(1))
    return torch.cat(out)


# ------------------------------------------------------------------ features


def bench_features(total_seconds: float) -> None:
    rng = np.random.default_rng(0)
    waves, seconds = [], 0.0
    while seconds < total_seconds:
        duration = float(rng.uniform(2, 15))
        waves.append(torch.from_numpy(speechlike(duration, 16000, len(waves))))
        seconds += duration

    def recipe():
        out = []
        for w in waves:
            m = torchaudio.compliance.kaldi.mfcc(w.view(1, -1), use_energy=False).T
            d = torchaudio.functional.compute_deltas(m)
            out.append(torch.cat([m, d, torchaudio.functional.compute_deltas(d)]).T)
        return out

    extractor = build_extractor(FeatureConfig())

    def batched():
        out, batch, batch_samples = [], [], 0
        for w in waves:
            batch.append(w)
            batch_samples += w.numel()
            if batch_samples >= 60 * 16000:
                out += extractor.extract_batch(batch)
                batch, batch_samples = [], 0
        return out + (extractor.extract_batch(batch) if batch else [])

    def with_librosa():
        import librosa

        return [
            librosa.feature.mfcc(y=w.numpy(), sr=16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=23) for w in waves
        ]

    threads = torch.get_num_threads()
    # All threads (torch's default), then one thread each: how a decoding worker of the features stage runs it
    # (data.num_workers processes of one thread each), and the per-core comparison, steadier on a shared VM.
    for count, suffix in ((threads, ""), (1, ", 1 thread")):
        torch.set_num_threads(count)
        with torch.inference_mode():  # median of 5 interleaved rounds (the rule for this comparison)
            results = interleaved({"recipe": recipe, "batched": batched}, repeats=5)
        t_recipe, lo_r, hi_r, ref, rounds_r = results["recipe"]
        t_ours, lo_o, hi_o, ours, rounds_o = results["batched"]
        max_diff = max(float((a - b).abs().max()) for a, b in zip(ref, ours))
        range_r, range_o = f"{lo_r:.3f}-{hi_r:.3f}", f"{lo_o:.3f}-{hi_o:.3f}"
        record("features", f"fairseq recipe (per utterance){suffix}", t_recipe, range_s=range_r, rtf=seconds / t_recipe)
        record("features", f"speechvq mfcc_hubert (batched){suffix}", t_ours, range_s=range_o, rtf=seconds / t_ours,
               speedup_vs_recipe=t_recipe / t_ours, speedup_range=speedups(rounds_r, rounds_o)["speedup_range"],
               max_abs_diff=max_diff)  # fmt: skip
    torch.set_num_threads(threads)
    t_librosa = interleaved({"librosa": with_librosa}, repeats=1)["librosa"][0]
    record("features", "librosa.feature.mfcc (statics only)", t_librosa, rtf=seconds / t_librosa)


# ------------------------------------------------------------------ k-means


def mfcc_like_frames(min_frames: int) -> torch.Tensor:
    """Real MFCCs of data/demo, repeated with small per-copy noise until min_frames."""
    from speechvq.data import iter_waveforms
    from speechvq.manifest import list_utterances

    extractor = build_extractor(FeatureConfig())
    waves = [w.samples for w in iter_waveforms(list_utterances(REPO / "data/demo"), 16000, 2, "raise", [])]
    with torch.inference_mode():
        base = torch.cat(extractor.extract_batch(waves))
    g = torch.Generator().manual_seed(0)
    copies = [base] + [
        base + 0.05 * base.std(0) * torch.randn(base.shape, generator=g)
        for _ in range(-(-min_frames // base.shape[0]) - 1)
    ]
    return torch.cat(copies)


def hubert_like_frames(num_frames: int, dim: int = 768, clusters: int = 1000) -> torch.Tensor:
    """Synthetic 'layer features': a mixture of anisotropic Gaussians (no natural K=500 partition)."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(clusters, dim, generator=g) * 2
    which = torch.randint(clusters, (num_frames,), generator=g)
    scales = torch.rand(clusters, 1, generator=g) + 0.5
    return centres[which] + torch.randn(num_frames, dim, generator=g) * scales[which]


def bench_kmeans(frames: torch.Tensor, k: int, label: str, with_minibatch: bool, seeds: tuple[int, ...] = (0,)) -> None:
    """The whole fit against faiss, once per k-means seed: how many full-data iterations the fit needs before its
    stopping test holds varies with the seed (9 to 34 at D=39 K=100), and faiss' bare-iterations peer is given
    that number, so one seed alone shows one draw of that comparison."""
    times = [
        _bench_fit(frames, k, f"k-means {label}" + (f" seed {seed}" if len(seeds) > 1 else ""), seed) for seed in seeds
    ]
    if with_minibatch:
        _bench_minibatch(frames, k, f"k-means {label}", statistics.median(times))


def _bench_fit(frames: torch.Tensor, k: int, section: str, seed: int) -> float:
    """speechvq's fit (seed `seed`) against faiss on all points for its full-data iterations, faiss with its default
    sample, and faiss on speechvq's own schedule; returns speechvq's median time."""
    import faiss

    fit = kmeans(frames, k, generator=torch.Generator().manual_seed(seed), max_iter=100, tol=1e-4, n_init=1)
    x = np.ascontiguousarray(frames.numpy())

    def faiss_fit(max_points, niter=fit.num_iterations, start=None):
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed + 1, max_points_per_centroid=max_points)
        km.train(x, init_centroids=start)
        return km.centroids

    methods = {
        "speechvq (k-means++, Lloyd, n_init=1)": lambda: (
            kmeans(frames, k, generator=torch.Generator().manual_seed(seed), max_iter=100, tol=1e-4, n_init=1).centroids
        ),
        f"faiss.Kmeans, all points (niter={fit.num_iterations})": lambda: faiss_fit(x.shape[0] // k + 1),
        f"faiss.Kmeans, default 256 pts/centroid (niter={fit.num_iterations})": lambda: faiss_fit(256),
    }
    if fit.sample_iterations:
        # speechvq's own schedule, iteration for iteration: Lloyd on a 256-frame-per-centroid sample, then on all
        # frames from those centroids (only the k-means++ seeding, which faiss does not have, is not mirrored).
        schedule = f"faiss.Kmeans, same schedule ({fit.sample_iterations} on 256 pts/centroid + {fit.num_iterations})"
        methods[schedule] = lambda: faiss_fit(x.shape[0] // k + 1, start=faiss_fit(256, fit.sample_iterations))
    return record_codebooks(section, frames, interleaved(methods, repeats=3))


def _bench_minibatch(frames: torch.Tensor, k: int, section: str, t_ours: float) -> None:
    """fairseq's MiniBatchKMeans, once: it takes seconds."""
    time.sleep(QUIET_S)
    start = time.perf_counter()
    mbk = fairseq_minibatch_kmeans(k, seed=0).fit(frames.numpy())
    t_mbk = time.perf_counter() - start
    record(section, "MiniBatchKMeans fairseq (n_init=20)", t_mbk, inertia=inertia(frames, mbk.cluster_centers_),
           speechvq_speedup=t_mbk / t_ours)  # fmt: skip


def fairseq_minibatch_kmeans(k: int, seed: int):
    """sklearn's MiniBatchKMeans with the settings of fairseq's examples/hubert/simple_kmeans/learn_kmeans.py."""
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(
        n_clusters=k,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        tol=0.0,
        max_no_improvement=100,
        n_init=20,
        reassignment_ratio=0.0,
        compute_labels=False,
        init_size=None,
        random_state=seed,
    )


def bench_lloyd(frames: torch.Tensor, k: int, label: str, iterations: int = 10) -> None:
    """Equal iterations from the same start: Lloyd alone, without speechvq's k-means++ seeding and coarse phase
    (which the whole-fit rows above include and faiss' random start does not)."""
    import faiss

    section = f"Lloyd {label}"
    start = frames[torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(3))[:k]].clone()
    x = np.ascontiguousarray(frames.numpy())

    def faiss_lloyd():
        km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=1, max_points_per_centroid=x.shape[0] // k + 1)
        km.train(x, init_centroids=start.numpy())
        return km.centroids

    methods = {
        f"speechvq lloyd ({iterations} iterations)": lambda: (
            lloyd(frames, start, max_iter=iterations, tol=-1.0).centroids
        ),
        f"faiss.Kmeans from the same start (niter={iterations})": faiss_lloyd,
    }
    record_codebooks(section, frames, interleaved(methods, repeats=3))


# ------------------------------------------------------------------ assignment


def bench_assignment(frames: torch.Tensor, k: int, label: str) -> None:
    import faiss

    section = f"assign {label}"
    g = torch.Generator().manual_seed(2)
    centroids = frames[torch.randperm(frames.shape[0], generator=g)[:k]].clone()
    truth = exact_labels(frames, centroids)
    x, c = frames.numpy(), centroids.numpy()
    n = frames.shape[0]

    c_norm = (c**2).sum(1)

    def apply_kmeans():  # fairseq examples/hubert/simple_kmeans/dump_km_label.py ApplyKmeans (numpy)
        dist = (x**2).sum(1, keepdims=True) - 2 * np.matmul(x, c.T) + c_norm[None, :]
        return torch.from_numpy(np.argmin(dist, axis=1))

    index = faiss.IndexFlatL2(c.shape[1])
    index.add(np.ascontiguousarray(c))
    x_contiguous = np.ascontiguousarray(x)
    methods = {
        "speechvq nearest_codewords (fp32)": lambda: nearest_codewords(frames, centroids)[0],
        "fairseq ApplyKmeans (numpy)": apply_kmeans,
        "faiss IndexFlatL2.search(k=1)": lambda: torch.from_numpy(index.search(x_contiguous, 1)[1][:, 0]),
    }
    results = interleaved(methods, repeats=5)
    ours = results["speechvq nearest_codewords (fp32)"][4]
    for name, (median, low, high, labels, rounds) in results.items():
        record(
            section,
            name,
            median,
            range_s=f"{low:.4f}-{high:.4f}",
            frames_per_s=n / median,
            agreement=float((labels == truth).double().mean()),
            **({} if name.startswith("speechvq") else speedups(rounds, ours)),
        )


# ------------------------------------------------------------------ end to end


def write_corpus(folder: Path, num_files: int, seconds: float, seed: int = 0) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0.0
    for index in range(num_files):
        duration = seconds * float(rng.uniform(0.8, 1.2))
        soundfile.write(
            folder / f"utt{index:06d}.wav", speechlike(duration, 16000, index % 97), 16000, subtype="PCM_16"
        )
        total += duration
    return total


CHILD = """
import json, resource, sys, time, torch
from speechvq import pipeline
from speechvq.config import RunConfig, DataConfig, CodebookConfig
config = RunConfig(data=DataConfig(path=sys.argv[1], alignments=None, num_workers=int(sys.argv[4]), on_error="raise"),
                   codebook=CodebookConfig(path=sys.argv[2]), stages=["features", "quantize"], device="cpu")
start = time.perf_counter()
pipeline.run(config, sys.argv[3])
seconds = time.perf_counter() - start
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mb": int(hwm) / 1024, "worker_peak_rss_mb": child / 1024}))
"""


def run_child(corpus: Path, codebook: Path, run_dir: Path, workers: int = DataConfig().num_workers) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(corpus), str(codebook), str(run_dir), str(workers)],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_end_to_end(work: Path, e2e_minutes: float, small_files: int) -> None:
    from speechvq.codebook import Codebook

    frames = mfcc_like_frames(50_000)[:50_000]
    fit = kmeans(frames, 100, generator=torch.Generator().manual_seed(0), max_iter=30)
    codebook = Codebook(fit.centroids, FeatureConfig().to_dict(), 100.0).save(work / "codebook.safetensors")

    corpus = work / "long"
    audio_s = write_corpus(corpus, num_files=int(e2e_minutes * 60 / 15), seconds=15.0)
    # The default configuration (data.num_workers decoding workers, which also run the MFCC), then one worker.
    for workers in (DataConfig().num_workers, 1):
        runs = [run_child(corpus, codebook, work / f"run_long{workers}_{index}", workers) for index in range(3)]
        seconds = sorted(run["seconds"] for run in runs)  # median of 3
        record(
            "end to end",
            f"{audio_s / 60:.0f} min of 16 kHz WAV, ~15 s files, {workers} decoding worker{'s' * (workers > 1)}",
            seconds[1],
            range_s=f"{seconds[0]:.2f}-{seconds[2]:.2f}",
            realtime_factor=audio_s / seconds[1],
            peak_rss_mb=max(run["peak_rss_mb"] for run in runs),
        )

    for count in (small_files, 10 * small_files):
        folder = work / f"files{count}"
        audio_s = write_corpus(folder, num_files=count, seconds=1.0, seed=count)
        stats = run_child(folder, codebook, work / f"run{count}")
        record(
            "memory scaling",
            f"{count} files of ~1 s",
            stats["seconds"],
            realtime_factor=audio_s / stats["seconds"],
            peak_rss_mb=stats["peak_rss_mb"],
            worker_peak_rss_mb=stats["worker_peak_rss_mb"],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for checking the script itself")
    parser.add_argument("--skip", nargs="*", default=[], choices=["features", "kmeans", "assign", "e2e"])
    args = parser.parse_args()
    info = machine()
    print(json.dumps(info, indent=1))
    quick = args.quick
    started = time.perf_counter()
    if "features" not in args.skip:
        bench_features(60 if quick else 1200)
    mfcc = mfcc_like_frames(20_000 if quick else 200_000)
    hubert = hubert_like_frames(10_000 if quick else 100_000)
    if "kmeans" not in args.skip:
        bench_kmeans(mfcc, 100, "D=39 K=100", with_minibatch=True, seeds=(0, 1, 2))
        bench_kmeans(hubert, 500 if not quick else 50, "D=768 K=500", with_minibatch=False)
        bench_lloyd(mfcc, 100, "D=39 K=100")
        bench_lloyd(hubert, 500 if not quick else 50, "D=768 K=500")
    if "assign" not in args.skip:
        bench_assignment(mfcc, 100, "D=39 K=100")
        bench_assignment(hubert, 500, "D=768 K=500")
    if "e2e" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            bench_end_to_end(Path(tmp), e2e_minutes=3 if quick else 60, small_files=100 if quick else 1000)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "torch": torch.__version__, "rows": ROWS}, indent=2))


if __name__ == "__main__":
    main()
