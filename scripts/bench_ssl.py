"""SSL features (features=ssl): real-time factor of HuBERT-base layer-6 extraction, and what bf16 autocast changes.

On the bundled LibriSpeech utterances (real read speech, 2-35 s each):
  per file      extractor(wave) one file at a time, fp32
  batched       extract_batch in length-sorted, padded and masked batches, fp32 (what the features stage does)
  batched bf16  the same under bf16 autocast (features.dtype=bfloat16)
and the agreement of k-means K=500 units (codebook fit on the fp32 frames) between fp32 and bf16 frames.
Methods are interleaved and repeated; medians and ranges are printed. The model is torchaudio's hubert_base
architecture with random weights (nothing may be downloaded here): speed is that of the real model, the unit
agreement is only indicative of trained weights.

Usage: python scripts/bench_ssl.py [--minutes 3] [--repeats 3] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import soundfile
import torch
import torchaudio
from safetensors.torch import save_file

from speechvq.codebook import kmeans
from speechvq.config import FeatureConfig
from speechvq.features import build_extractor
from speechvq.quantize import nearest_codewords

REPO = Path(__file__).resolve().parents[1]


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = "MKL" if torch.backends.mkl.is_available() else "non-MKL"
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads, {blas} BLAS, torch {torch.__version__}{gpu}"


def load_speech(minutes: float) -> tuple[list[torch.Tensor], float]:
    waves, seconds = [], 0.0
    for path in sorted((REPO / "data" / "librispeech").glob("*.flac")):
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == 16000, path
        waves.append(torch.from_numpy(audio))
        seconds += audio.size / rate
        if seconds >= 60 * minutes:
            break
    return waves, seconds


def synthetic_speech(minutes: float) -> tuple[list[torch.Tensor], float]:
    """Utterances of 2-35 s (as the bundled LibriSpeech ones), harmonic and noisy like speech."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import speechlike

    generator = torch.Generator().manual_seed(0)
    waves, seconds = [], 0.0
    while seconds < 60 * minutes:
        duration = float(torch.empty(1).uniform_(2.0, 35.0, generator=generator))
        waves.append(torch.from_numpy(speechlike(duration, 16000, len(waves))).float())
        seconds += duration
    return waves, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="speech-like synthetic audio of LibriSpeech's lengths, where no audio library is installed (speed only)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine(device))
    waves, seconds = synthetic_speech(args.minutes) if args.synthetic else load_speech(args.minutes)
    print(f"{len(waves)} utterances, {seconds / 60:.1f} min of speech, device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        weights = Path(tmp) / "hubert_base_random.safetensors"
        save_file({k: v.contiguous() for k, v in torchaudio.models.hubert_base().state_dict().items()}, weights)
        fp32 = build_extractor(FeatureConfig(name="ssl", checkpoint=str(weights), layer=6))
        bf16 = build_extractor(FeatureConfig(name="ssl", checkpoint=str(weights), layer=6, dtype="bfloat16"))
    fp32.model.to(device)
    bf16.model = fp32.model  # the same weights, only the autocast differs
    on_device = [w.to(device) for w in waves]

    def per_file():
        return [fp32(w) for w in on_device]

    methods = {"per file fp32": per_file, "batched fp32": lambda: _batched(fp32, on_device),
               "batched bf16": lambda: _batched(bf16, on_device)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs = {}
    for _ in range(args.repeats):  # interleaved: every method once per round
        for name, method in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name] = method()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, spent in times.items():
        rtf = [seconds / t for t in spent]
        rows.append({"method": name, "rtf_median": statistics.median(rtf), "rtf_min": min(rtf), "rtf_max": max(rtf)})
        print(f"  {name:<16} {statistics.median(rtf):8.1f}x real time  (range {min(rtf):.1f}-{max(rtf):.1f})")
    rows.append(_agreement(outputs["batched fp32"], outputs["batched bf16"], outputs["per file fp32"], device))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "seconds": seconds, "rows": rows}, indent=2))


def _batched(extractor, waves, batch_seconds: float = 60.0):
    """As the features stage feeds the extractor: consecutive files up to batch_seconds of audio per call."""
    out, batch, samples = [], [], 0
    for wave in waves:
        batch.append(wave)
        samples += wave.numel()
        if samples >= batch_seconds * 16000:
            out += extractor.extract_batch(batch)
            batch, samples = [], 0
    return out + (extractor.extract_batch(batch) if batch else [])


def _agreement(fp32: list[torch.Tensor], bf16: list[torch.Tensor], alone: list[torch.Tensor], device) -> dict:
    frames32, frames16 = torch.cat(fp32), torch.cat(bf16)
    fit = kmeans(frames32, 500, generator=torch.Generator(device=frames32.device).manual_seed(0), max_iter=20)
    units32, _ = nearest_codewords(frames32, fit.centroids)
    units16, _ = nearest_codewords(frames16.float(), fit.centroids)
    units_alone, _ = nearest_codewords(torch.cat(alone), fit.centroids)
    row = {
        "method": "units K=500",
        "bf16_vs_fp32_agreement": float((units32 == units16).double().mean()),
        "batched_vs_per_file_agreement": float((units32 == units_alone).double().mean()),
        "max_abs_diff_batched_vs_per_file": float((frames32 - torch.cat(alone)).abs().max()),
        "frames": int(frames32.shape[0]),
    }
    print(f"  units K=500: bf16 vs fp32 agree on {100 * row['bf16_vs_fp32_agreement']:.2f} % of "
          f"{row['frames']} frames; batched vs per file {100 * row['batched_vs_per_file_agreement']:.2f} % "
          f"(max |diff| {row['max_abs_diff_batched_vs_per_file']:.2g})")  # fmt: skip
    return row


if __name__ == "__main__":
    main()
