"""Plant known plausible bugs, one at a time, in a scratch copy of the repository and check that the tests catch
each one. Not part of the suite (it runs parts of the suite many times); run it after changing tests or core code.

Usage: python scripts/check_mutants.py [--only NAME ...]
Prints one line per mutant: CAUGHT (with the first failing test), MISSED, or NO GPU (its tests need CUDA and
were skipped). Exit status 1 if any was missed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (file, code as it is, code with the bug, tests that should catch it)
MUTANTS = {
    "the training sample is drawn from the shard, not the whole listing": (
        "speechvq/stages/features.py",
        "chosen = training_sample(listing, extractor.frame_rate_hz, max_train_frames, seed)",
        "chosen = training_sample(utterances, extractor.frame_rate_hz, max_train_frames, seed)",
        ["tests/test_store_modes.py::test_sample_stores_at_most_max_train_frames_whatever_the_sharding"],
    ),
    "frames from the audio not rounded to features.store_dtype": (
        "speechvq/streaming.py",
        '    return as_stored(frames.to("cpu", torch.float32), features.store_dtype)',
        '    return frames.to("cpu", torch.float32)',
        ["tests/test_store_modes.py::test_float16_store_is_rounded_alike_from_the_audio"],
    ),
    "streaming quantize decodes its done parts again": (
        "speechvq/stages/quantize.py",
        "    todo = [number for number in range(source.num_parts) if not _done_file(parts_dir, number).exists()]",
        "    todo = list(range(source.num_parts))",
        ["tests/test_store_modes.py::test_streaming_quantize_resumes_without_decoding_the_done_parts"],
    ),
    "a unit file is joined again after its parts were dropped": (
        "speechvq/stages/quantize.py",
        "    if not marker.exists():\n        join(out, parts)",
        "    if True:\n        join(out, parts)",
        ["tests/test_store_modes.py::test_a_crash_between_the_final_joins_resumes_to_the_same_files"],
    ),
    "a segment is read from the start of its file": (
        "speechvq/audio.py",
        "            handle.seek(start)\n",
        "            handle.seek(0)\n",
        ["tests/test_segments.py"],
    ),
    "a WebDataset sample's id is its member name, not its key": (
        "speechvq/corpora.py",
        "Utterance(key, shard, member=name)",
        "Utterance(name, shard, member=name)",
        ["tests/test_corpus_formats.py"],
    ),
    "chunk loop runs on chunk_size <= 0": (
        "speechvq/quantize.py",
        "    check_precision(precision, frames.device)\n    check_chunk_size(chunk_size)\n",
        "    check_precision(precision, frames.device)\n",
        ["tests/test_quantize.py"],
    ),
    "a kernel imports its caller back (an import circle)": (
        "speechvq/cpu_kernels.py",
        "from .distances import gemm_gamma\n",
        "from .quantize import gemm_gamma\n",
        ["tests/test_import_graph.py"],
    ),
    "features resume counts only the stored files as consumed": (
        "speechvq/stages/features.py",
        '"consumed": len(self.processed) + len(decode_skips),',
        '"consumed": len(self.processed),',
        ["tests/test_resume.py::test_sigkill_after_decode_failures_resumes_to_the_uninterrupted_units"],
    ),
    "k-means++ on the CPU seeds from GEMM distances (follows the BLAS)": (
        "speechvq/codebook/kmeans.py",
        '    if space.device.type == "cpu":\n        from .. import cpu_kernels  # lazily',
        "    if False:\n        from .. import cpu_kernels  # lazily",
        ["tests/test_kmeans.py::test_the_codebook_does_not_follow_the_gemms_rounding"],
    ),
    "the stopping test sums the GEMM's distances (follows the BLAS)": (
        "speechvq/codebook/kmeans.py",
        "            inertia = inertia_from_totals(sq_norm_total, new_totals, centroids)\n",
        "            inertia = float(nearest(centroids)[1].sum(dtype=torch.float64))\n",
        ["tests/test_kmeans.py::test_the_codebook_does_not_follow_the_gemms_rounding"],
    ),
    "stereo read as its first channel": (
        "speechvq/audio.py",
        "    mono = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])\n",
        "    mono = torch.from_numpy(data[:, 0])\n",
        ["tests/test_promises.py"],
    ),
    "a live holder's run-folder lock is taken over": (
        "speechvq/run_lock.py",
        '        if holder.get("host") != socket.gethostname() or _alive(holder):\n',
        "        if False:\n",
        ["tests/test_disk_and_lock.py"],
    ),
    "a full disk surfaces as a raw OSError": (
        "speechvq/fileio.py",
        "        if isinstance(exc, OSError) and exc.errno in DISK_FULL:\n",
        "        if False:\n",
        ["tests/test_disk_and_lock.py"],
    ),
    "the API assigns unrounded frames of a float16 store": (
        "speechvq/api.py",
        "self.extractor(self._samples(waveform, sample_rate)), self.feature_config.store_dtype)",
        "self.extractor(self._samples(waveform, sample_rate)), 'float32')",
        ["tests/test_store_dtype.py"],
    ),
    "config accepts chunk_size <= 0": (
        "speechvq/checks.py",
        'OPTIONAL_AT_LEAST = {"codebook.chunk_size": 1, "quantize.chunk_size": 1}',
        "OPTIONAL_AT_LEAST = {}",
        ["tests/test_config_checks.py"],
    ),
    "quantize.precision not passed on": (
        "speechvq/units.py",
        "centroids[:, part].contiguous(), self.chunk_size, self.precision\n",
        "centroids[:, part].contiguous(), self.chunk_size\n",
        ["tests/test_quantize.py"],
    ),
    "fast precision silently exact on CPU": (
        "speechvq/quantize.py",
        '    if precision in CUDA_ONLY_PRECISIONS and device.type != "cuda":',
        "    if False:",
        ["tests/test_quantize.py", "tests/test_kmeans.py"],
    ),
    "DataLoader inherits the host's start method (joblib)": (
        "speechvq/data.py",
        "        multiprocessing_context=_worker_context() if num_workers > 0 else None,\n",
        "",
        ["tests/test_readme.py"],
    ),
    "k-means keeps the first restart": (
        "speechvq/codebook/kmeans.py",
        "if best is None or result.inertia < best.inertia:",
        "if best is None:",
        ["tests/test_kmeans.py"],
    ),
    "phone purity and cluster purity swapped": (
        "speechvq/metrics.py",
        '"phone_purity": float(joint.max(dim=0).values.sum()),\n        "cluster_purity": float(joint.max(dim=1)',
        '"phone_purity": float(joint.max(dim=1).values.sum()),\n        "cluster_purity": float(joint.max(dim=0)',
        ["tests/test_metrics.py", "tests/test_pipeline.py"],
    ),
    "PNMI normalised by H(unit)": (
        "speechvq/metrics.py",
        "h_phone = -float((p_phone[p_phone > 0] * p_phone[p_phone > 0].log()).sum())",
        "h_phone = -float((p_unit[p_unit > 0] * p_unit[p_unit > 0].log()).sum())",
        ["tests/test_metrics.py"],
    ),
    "resume offset ignores decode-time skips": (
        "speechvq/stages/features.py",
        '"consumed": len(self.processed) + len(decode_skips),',
        '"consumed": len(self.processed),',
        ["tests/test_resume.py::test_features_resume_counts_files_skipped_at_decode_time"],
    ),
    "merge skips its sharding check": (
        "speechvq/stages/merge.py",
        "        if meta.shard.num_shards != num_shards or meta.shard",
        "        if False and meta.shard",
        ["tests/test_sharding.py"],
    ),
    "merge skips its dataset-size check": (
        "speechvq/stages/merge.py",
        "    if found != first.shard.dataset_utterances:",
        "    if False:",
        ["tests/test_sharding.py"],
    ),
    "dead-code restart at the origin": (
        "speechvq/encoder/quantizers.py",
        "                self.codebook[dead] = flat[pick]\n",
        "                self.codebook[dead] = 0.0\n",
        ["tests/test_quantizers.py"],
    ),
    "empty cluster re-seeded at the best-served frames": (
        "speechvq/codebook/kmeans.py",
        "return frames[torch.sort(sq_dists, descending=True, stable=True).indices[:count]]",
        "return frames[torch.sort(sq_dists, descending=False, stable=True).indices[:count]]",
        ["tests/test_kmeans.py"],
    ),
    "k-means++ keeps the worst candidate": (
        "speechvq/codebook/kmeans.py",
        "pick = int(potentials.argmin())",
        "pick = int(potentials.argmax())",
        ["tests/test_kmeans.py"],
    ),
    "SSL chunks lose their context": (
        "speechvq/features/base.py",
        "        start = max(0, core_start - context)\n",
        "        start = core_start\n",
        ["tests/test_ssl.py"],
    ),
    "SSL chunk stitched one frame off": (
        "speechvq/features/base.py",
        "out[first:last] = frames[first - start // hop : last - start // hop]",
        "out[first:last] = frames[first - start // hop + 1 : last - start // hop + 1]",
        ["tests/test_ssl.py"],
    ),
    "mfcc delta-deltas taken of the statics": (
        "speechvq/features/mfcc.py",
        "delta_deltas = torchaudio.functional.compute_deltas(deltas)",
        "delta_deltas = torchaudio.functional.compute_deltas(static)",
        ["tests/test_features.py"],
    ),
    "codebook.path ignored: retrained on the new dataset": (
        "speechvq/stages/train.py",
        '    if codebook.path:\n        log.info("train: reusing',
        '    if False:\n        log.info("train: reusing',
        ["tests/test_pipeline.py"],
    ),
    "train_encoder accepts zero steps": (
        "speechvq/encoder/train.py",
        '    for key in ("steps", "batch_size"):',
        "    for key in ():",
        ["tests/test_config_checks.py"],
    ),
    "sharding rule floors instead of rounding": (
        "speechvq/manifest.py",
        "return utterances[round(total * shard_index / num_shards) : round(total * (shard_index + 1) / num_shards)]",
        "return utterances[total * shard_index // num_shards : total * (shard_index + 1) // num_shards]",
        ["tests/test_manifest.py"],
    ),
    "fused kernel with single TF32 products": (  # CUDA only: the Triton interpreter computes in fp32 whatever
        "speechvq/gpu_kernels.py",  # the precision, so only the gpu-marked test can see this one
        '    precision: str = "tf32x3",',
        '    precision: str = "tf32",',
        ["tests/test_quantize.py::test_cuda_labels_equal_the_float64_argmin"],
    ),
    "units.meta.json hashes stale bytes": (
        "speechvq/stages/merge.py",
        "        files=folder.unit_files({name: first.files[name].contents for name in names}),\n",
        "",
        ["tests/test_sharding.py"],
    ),
}


def scratch_copy() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="speechvq-mutants-")) / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="names (substrings) of mutants to run")
    args = parser.parse_args()
    copy = scratch_copy()
    missed = 0
    for name, (path, original, mutated, tests) in MUTANTS.items():
        if args.only and not any(part in name for part in args.only):
            continue
        source = (copy / path).read_text()
        if source.count(original) != 1:
            print(f"STALE   {name}: the original code is not found once in {path}; update this script")
            missed += 1
            continue
        (copy / path).write_text(source.replace(original, mutated))
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-rfs", "-p", "no:cacheprovider", *tests],
            cwd=copy,
            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": str(copy)},
            capture_output=True,
            text=True,
        )
        (copy / path).write_text(source)
        failed = re.findall(r"^FAILED (\S+)", done.stdout, flags=re.M)
        seconds = time.perf_counter() - start
        if done.returncode != 0 and failed:
            print(f"CAUGHT  {name} ({seconds:.0f} s): {failed[0]}")
        elif re.search(r"\d+ skipped", done.stdout) and not re.search(r"\d+ passed", done.stdout):
            print(f"NO GPU  {name}: its tests need CUDA and were skipped here (scripts/bench_gpu.sh runs them)")
        else:
            missed += 1
            print(f"MISSED  {name} ({seconds:.0f} s): pytest exit {done.returncode}")
    shutil.rmtree(copy.parent)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
