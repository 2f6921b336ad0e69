"""Span masking and frame-level targets for masked prediction (HuBERT) and contrastive (wav2vec 2.0) training."""

from __future__ import annotations

import math

import torch


def span_mask(num_frames: int, mask_prob: float, span: int, generator: torch.Generator) -> torch.Tensor:
    """wav2vec 2.0 / HuBERT masking of one utterance: mask_prob * num_frames / span start frames (rounded up or
    down at random, so the expected masked share before overlaps is mask_prob), drawn without replacement from
    the starts that fit, each masking `span` frames; spans may overlap. Returns (num_frames,) bool."""
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if num_frames < span or mask_prob <= 0:
        return mask
    num_starts = min(math.floor(mask_prob * num_frames / span + float(torch.rand(1, generator=generator))),
                     num_frames - span + 1)  # fmt: skip
    starts = torch.randperm(num_frames - span + 1, generator=generator)[:num_starts]
    for start in starts.tolist():
        mask[start : start + span] = True
    return mask


def targets_at_rate(labels: torch.Tensor, label_rate_hz: float, frame_rate_hz: float, num_frames: int) -> torch.Tensor:
    """Labels (num_labels,) at label_rate_hz for the first num_frames frames at frame_rate_hz, as HuBERT maps them:
    frame t takes label floor(t * label_rate / frame_rate) (100 Hz MFCC units -> 50 Hz frames: every other one).
    Frames past the last label are dropped, so the result may be shorter than num_frames."""
    ratio = label_rate_hz / frame_rate_hz
    index = (torch.arange(num_frames, dtype=torch.float64) * ratio).long()
    return labels[index[index < labels.numel()]]
