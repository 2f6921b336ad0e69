"""Training batches: waveform crops, span masks and frame-level targets (for the reconstruction and masked
prediction objectives). Every random draw comes from the generator passed in."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..audio import resample


def span_starts(num_frames: int, mask_prob: float, span: int, generator: torch.Generator) -> torch.Tensor:
    """HuBERT / wav2vec 2.0 span starts (the papers' p and l): mask_prob x num_frames of them, rounded up or down at
    random so that is the expected count, drawn without replacement from the starts where a span fits."""
    if num_frames < span or mask_prob <= 0:
        return torch.zeros(0, dtype=torch.long)
    count = min(math.floor(mask_prob * num_frames + float(torch.rand(1, generator=generator))), num_frames - span + 1)
    return torch.randperm(num_frames - span + 1, generator=generator)[:count]


def span_mask(num_frames: int, mask_prob: float, span: int, generator: torch.Generator) -> torch.Tensor:
    """(num_frames,) bool: `span` frames from each of span_starts (spans may overlap; p = 0.08 and l = 10, as
    HuBERT uses, mask about half of the frames)."""
    mask = torch.zeros(num_frames, dtype=torch.bool)
    for start in span_starts(num_frames, mask_prob, span, generator).tolist():
        mask[start : start + span] = True
    return mask


def targets_at_rate(labels: torch.Tensor, label_rate_hz: float, frame_rate_hz: float, num_frames: int) -> torch.Tensor:
    """Labels (num_labels,) at label_rate_hz for the first num_frames frames at frame_rate_hz, as HuBERT maps them:
    frame t takes label floor(t * label_rate / frame_rate) (100 Hz MFCC units -> 50 Hz frames: every other one).
    Frames past the last label are dropped, so the result may be shorter than num_frames."""
    ratio = label_rate_hz / frame_rate_hz
    index = (torch.arange(num_frames, dtype=torch.float64) * ratio).long()
    return labels[index[index < labels.numel()]]


def crop_batch(waves: list[torch.Tensor], segment: int, generator: torch.Generator) -> torch.Tensor:
    """(len(waves), segment): a random crop of each longer waveform, shorter ones zero-padded."""
    batch = torch.zeros(len(waves), segment)
    for row, wave in enumerate(waves):
        if wave.numel() > segment:
            start = int(torch.randint(wave.numel() - segment + 1, (1,), generator=generator))
            batch[row] = wave[start : start + segment]
        else:
            batch[row, : wave.numel()] = wave
    return batch


def crop_start(num_samples: int, segment: int, hop: int, generator: torch.Generator) -> int:
    """A random start on the frame grid (a multiple of `hop`) for a crop of `segment` samples; 0 when shorter."""
    if num_samples <= segment:
        return 0
    return int(torch.randint((num_samples - segment) // hop + 1, (1,), generator=generator)) * hop


def grid_crops(waves: list[torch.Tensor], segment: int, hop: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A crop of up to `segment` samples from each waveform, starting on the frame grid; no padding."""
    return [w[(s := crop_start(w.numel(), segment, hop, generator)) : s + segment] for w in waves]


def narrowband(
    crops: list[torch.Tensor], share: float, sample_rate: int, generator: torch.Generator, band_rate: int = 8000
) -> list[torch.Tensor]:
    """Telephone-band versions of a random `share` of the crops: resampled to band_rate and back, so nothing above
    band_rate / 2 is left (FSDD's 8 kHz recordings sound like that to a 16 kHz front end); lengths are kept, so
    frame-aligned targets still hold. share 0 draws nothing: the generator's stream is as without it."""
    if share <= 0:
        return crops
    picks = (torch.rand(len(crops), generator=generator) < share).tolist()
    return [_band_limited(crop, sample_rate, band_rate) if pick else crop for crop, pick in zip(crops, picks)]


def _band_limited(crop: torch.Tensor, sample_rate: int, band_rate: int) -> torch.Tensor:
    # audio.resample keeps each rate pair's sinc kernel: this runs on every step's crops
    back = resample(resample(crop, sample_rate, band_rate), band_rate, sample_rate)[: crop.numel()]
    return F.pad(back, (0, crop.numel() - back.numel()))


def aligned_crops(
    waves: list[torch.Tensor], labels: list[torch.Tensor], segment: int, hop: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Crops that start on the frame grid (a multiple of `hop` samples), with their frames' labels.

    labels[i] holds one label per frame of waves[i] (frame t covering samples from t * hop). Returns the crops,
    the labels (batch, frames) padded with 0, and which of those are real (batch, frames) bool."""
    crops, rows = [], []
    for wave, wave_labels in zip(waves, labels):
        start = crop_start(wave.numel(), segment, hop, generator)
        crops.append(wave[start : start + segment])
        first = start // hop
        rows.append(wave_labels[first : first + segment // hop])
    width = max(row.numel() for row in rows)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        targets[i, : row.numel()], valid[i, : row.numel()] = row, True
    return crops, targets, valid
