"""Kaldi MFCC / fbank for many utterances at once.

The same arithmetic as torchaudio.compliance.kaldi (snip_edges framing, DC removal, pre-emphasis 0.97, Povey
window, 512-point power spectrum, Kaldi mel banks, log, orthonormal DCT, lifter 22; no dither), done on a
padded (batch, samples) tensor, so a whole batch costs a handful of large tensor ops instead of ~30 small ops
per utterance. Every step is per frame, so padding never leaks into a real frame; deltas use each
utterance's own last frame for their edge padding."""

from __future__ import annotations

import functools
import math

import torch
import torchaudio
from torchaudio.compliance import kaldi

PREEMPHASIS = 0.97
LIFTER = 22.0


@functools.lru_cache(maxsize=8)
def _constants(sample_rate: int, window: int, num_mel_bins: int, num_ceps: int):
    padded = 1 << (window - 1).bit_length()
    povey = torch.hann_window(window, periodic=False).pow(0.85)  # float32, exactly as torchaudio makes it
    banks, _ = kaldi.get_mel_banks(num_mel_bins, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks.float(), (0, 1))  # (bins, padded // 2 + 1)
    dct = torchaudio.functional.create_dct(num_mel_bins, num_mel_bins, "ortho")[:, :num_ceps] if num_ceps else None
    lifter = 1.0 + 0.5 * LIFTER * torch.sin(math.pi * torch.arange(num_ceps) / LIFTER) if num_ceps else None
    return padded, povey, banks, dct, lifter


def pad_batch(waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in waveforms])
    return torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True), lengths


def log_mel_batch(batch: torch.Tensor, sample_rate: int, window: int, hop: int, num_mel_bins: int) -> torch.Tensor:
    """(batch, samples) -> Kaldi log-mel (batch, max_frames, num_mel_bins); frames past an item's end are junk."""
    padded, povey, banks, _, _ = _constants(sample_rate, window, num_mel_bins, 0)
    if batch.shape[1] < window:
        return batch.new_zeros((batch.shape[0], 0, num_mel_bins))
    frames = batch.unfold(1, window, hop)  # (batch, frames, window), a view
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi repeats the first sample
    frames = (frames - PREEMPHASIS * previous) * povey.to(frames.device)
    spectrum = torch.fft.rfft(frames, n=padded)
    power = spectrum.real.square() + spectrum.imag.square()
    mel = power @ banks.to(frames.device).T
    return mel.clamp_(min=torch.finfo(torch.float32).eps).log_()


def mfcc_batch(batch: torch.Tensor, sample_rate: int, window: int, hop: int, num_mel_bins: int,
               num_ceps: int) -> torch.Tensor:
    """(batch, samples) -> Kaldi MFCC without energy (batch, max_frames, num_ceps)."""
    _, _, _, dct, lifter = _constants(sample_rate, window, num_mel_bins, num_ceps)
    log_mel = log_mel_batch(batch, sample_rate, window, hop, num_mel_bins)
    return (log_mel @ dct.to(batch.device)) * lifter.to(batch.device)


def deltas_batch(features: torch.Tensor, num_frames: torch.Tensor, width: int = 2) -> torch.Tensor:
    """torchaudio.functional.compute_deltas (window 2 * width + 1, edges replicated) along the frame axis of
    (batch, frames, dim), each item replicating its own last real frame."""
    positions = torch.arange(features.shape[1], device=features.device)
    last = (num_frames.to(features.device) - 1).clamp(min=0).unsqueeze(1)  # (batch, 1)
    out = torch.zeros_like(features)
    for n in range(1, width + 1):
        ahead = torch.minimum(positions + n, last).clamp(min=0)
        behind = torch.minimum((positions - n).clamp(min=0), last)
        gather = lambda index: features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.shape[2]))  # noqa: E731
        out += n * (gather(ahead) - gather(behind))
    return out / (width * (width + 1) * (2 * width + 1) / 3)
