"""Unit quality metrics as pure functions of counts and sums, plus a streaming accumulator
that gathers those counts over a dataset in one pass."""

from __future__ import annotations

import math

import torch

from .fileio import deduplicate_rows


def unit_distribution(counts: torch.Tensor) -> dict:
    """Usage statistics of a codebook from per-code frame counts (codebook_size,)."""
    counts = counts.to(torch.float64)
    total = float(counts.sum())
    used = int((counts > 0).sum())
    entropy = _entropy_bits(counts)
    return {
        "codebook_size": counts.numel(),
        "codes_used": used,
        "usage": used / counts.numel(),
        "dead_codes": counts.numel() - used,
        "entropy_bits": entropy,
        "perplexity": 2.0**entropy if total else 0.0,
    }


def distortion(sum_sq_error: float, num_frames: int, dim: int, total_variance: float) -> dict:
    """Quantization error. mse is per element; relative_mse = mse / mean per-dimension variance of the
    features; sqnr_db = 10 log10(variance / mse) (the features' own mean is the zero-rate reference)."""
    mse = sum_sq_error / max(num_frames * dim, 1)
    mean_variance = total_variance / dim
    relative = mse / mean_variance if mean_variance > 0 else math.inf
    return {
        "mse": mse,
        "relative_mse": relative,
        "sqnr_db": -10.0 * math.log10(relative) if 0 < relative < math.inf else math.inf,
    }


def bitrates(
    codebook_size: int, frame_rate_hz: float, entropy_bits: float, dedup_units_per_s: float, dedup_entropy_bits: float
) -> dict:
    return {
        "bitrate_bps": frame_rate_hz * math.log2(codebook_size),  # fixed-length code per frame
        "entropy_bitrate_bps": frame_rate_hz * entropy_bits,  # ideal entropy code per frame
        "dedup_units_per_s": dedup_units_per_s,
        "dedup_bitrate_bps": dedup_units_per_s * dedup_entropy_bits,  # entropy code after run-length dedup
    }


def phone_unit_scores(joint_counts: torch.Tensor) -> dict:
    """HuBERT's label-quality scores from the joint counts over frames (num_phones, num_units):
    PNMI = I(phone; unit) / H(phone); phone purity = E_unit[max_phone p(phone | unit)];
    cluster purity = E_phone[max_unit p(unit | phone)]."""
    joint = joint_counts.to(torch.float64)
    joint = joint / joint.sum()
    p_phone = joint.sum(dim=1)
    p_unit = joint.sum(dim=0)
    nz = joint > 0
    mutual_info = float((joint[nz] * torch.log(joint[nz] / torch.outer(p_phone, p_unit)[nz])).sum())
    h_phone = -float((p_phone[p_phone > 0] * p_phone[p_phone > 0].log()).sum())
    return {
        "pnmi": mutual_info / h_phone if h_phone > 0 else 0.0,
        "phone_purity": float(joint.max(dim=0).values.sum()),
        "cluster_purity": float(joint.max(dim=1).values.sum()),
        "mutual_info_bits": mutual_info / math.log(2),
        "phone_entropy_bits": h_phone / math.log(2),
    }


def _entropy_bits(counts: torch.Tensor) -> float:
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * p.log2()).sum())


class MetricsAccumulator:
    """One pass over (frames, quantized frames, units) per utterance; `result()` turns the sums into the
    metrics above. With several codebooks, usage and perplexity are per-codebook averages, the entropy is the
    sum over codebooks (an upper bound on the joint entropy) and deduplication treats a frame's codes as one."""

    def __init__(self, codebook_size: int, num_codebooks: int, frame_rate_hz: float):
        self.codebook_size, self.num_codebooks, self.frame_rate_hz = codebook_size, num_codebooks, frame_rate_hz
        self.counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.long)
        self.dedup_counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.long)
        self.sum_sq_error = 0.0
        self.feature_sum = self.feature_sq_sum = None
        self.num_frames = self.num_dedup = self.num_utterances = 0

    def add(self, frames: torch.Tensor, quantized: torch.Tensor, units: torch.Tensor) -> None:
        """frames, quantized (num_frames, dim) in the quantizer's space; units (num_frames, num_codebooks)."""
        frames64 = frames.cpu().to(torch.float64)
        if self.feature_sum is None:
            self.feature_sum = torch.zeros(frames.shape[1], dtype=torch.float64)
            self.feature_sq_sum = torch.zeros(frames.shape[1], dtype=torch.float64)
        self.sum_sq_error += float((frames64 - quantized.cpu().to(torch.float64)).square().sum())
        self.feature_sum += frames64.sum(dim=0)
        self.feature_sq_sum += frames64.square().sum(dim=0)
        dedup, _ = deduplicate_rows(units)
        for stream in range(self.num_codebooks):
            self.counts[stream] += torch.bincount(units[:, stream], minlength=self.codebook_size)
            self.dedup_counts[stream] += torch.bincount(dedup[:, stream], minlength=self.codebook_size)
        self.num_frames += units.shape[0]
        self.num_dedup += dedup.shape[0]
        self.num_utterances += 1

    def merge(self, other: MetricsAccumulator) -> None:
        """Add another accumulator's sums (another rank's utterances)."""
        self.counts += other.counts
        self.dedup_counts += other.dedup_counts
        self.sum_sq_error += other.sum_sq_error
        if other.feature_sum is not None:
            if self.feature_sum is None:
                self.feature_sum, self.feature_sq_sum = other.feature_sum.clone(), other.feature_sq_sum.clone()
            else:
                self.feature_sum += other.feature_sum
                self.feature_sq_sum += other.feature_sq_sum
        self.num_frames += other.num_frames
        self.num_dedup += other.num_dedup
        self.num_utterances += other.num_utterances

    def result(self) -> dict:
        n = max(self.num_frames, 1)
        dim = self.feature_sum.numel() if self.feature_sum is not None else 1
        variance = 0.0
        if self.feature_sum is not None:
            variance = float((self.feature_sq_sum / n - (self.feature_sum / n).square()).clamp(min=0).sum())
        streams = [unit_distribution(c) for c in self.counts]
        entropy = sum(s["entropy_bits"] for s in streams)
        duration_s = self.num_frames / self.frame_rate_hz
        dedup_entropy = sum(_entropy_bits(c.to(torch.float64)) for c in self.dedup_counts)
        usage = {
            "codebook_size": self.codebook_size,
            "num_codebooks": self.num_codebooks,
            "codes_used": sum(s["codes_used"] for s in streams),
            "usage": sum(s["usage"] for s in streams) / len(streams),
            "dead_codes": sum(s["dead_codes"] for s in streams),
            "entropy_bits": entropy,
            "perplexity": 2.0 ** (entropy / len(streams)) if self.num_frames else 0.0,
        }
        rates = bitrates(
            self.codebook_size,
            self.frame_rate_hz,
            entropy,
            self.num_dedup / duration_s if duration_s else 0.0,
            dedup_entropy,
        )
        rates["bitrate_bps"] *= self.num_codebooks
        return {
            "num_utterances": self.num_utterances,
            "num_frames": self.num_frames,
            "duration_s": duration_s,
            **distortion(self.sum_sq_error, self.num_frames, dim, variance),
            **usage,
            **rates,
        }
