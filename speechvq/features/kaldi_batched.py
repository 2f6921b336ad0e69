"""Kaldi MFCC / fbank for many utterances at once.

The same arithmetic as torchaudio.compliance.kaldi (snip_edges framing, DC removal, pre-emphasis 0.97, Povey
window, 512-point power spectrum, Kaldi mel banks, log, orthonormal DCT, lifter 22; no dither). The frames of
all utterances are stacked into one (total_frames, window) matrix with no padding, so a batch costs a handful
of large tensor ops instead of ~30 small ops per utterance. Deltas clamp at each utterance's own edges.

torch picks its CPU kernels by instruction set (ATen's reductions and transcendentals, MKL's GEMM and FFT), and their
float32 results can differ in the last bits from one CPU to the next. The constants are therefore made in float64
and rounded (torchaudio's float32 Povey window came from the CPU's own pow kernel: it differed between ATen's
default and AVX2 kernels), and each frame's mean is summed in float64 and rounded, so its result does not depend on
the reduction's vector width."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torchaudio
from torchaudio.compliance import kaldi

PREEMPHASIS = 0.97
LIFTER = 22.0


@contextlib.contextmanager
def _float64_by_default():
    """torchaudio's constant makers take no dtype: they make float64 ones while the default dtype is float64."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@functools.lru_cache(maxsize=8)
def _constants(sample_rate: int, window: int, num_mel_bins: int, num_ceps: int, device: torch.device):
    """(padded window, Povey window, mel banks transposed, DCT, lifter), float32: torchaudio's constants computed in
    float64 and rounded (its float32 ones came from the CPU's own pow, log and cos kernels)."""
    padded = 1 << (window - 1).bit_length()
    with _float64_by_default():
        povey = torch.hann_window(window, periodic=False).pow(0.85).float()
        banks, _ = kaldi.get_mel_banks(num_mel_bins, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
        banks = torch.nn.functional.pad(banks.float(), (0, 1))  # (bins, padded // 2 + 1)
        dct = (
            torchaudio.functional.create_dct(num_mel_bins, num_mel_bins, "ortho")[:, :num_ceps].float()
            if num_ceps
            else None
        )
    lifter = cepstral_lifter(num_ceps) if num_ceps else None
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return padded, move(povey), move(banks.T.contiguous()), move(dct), move(lifter)


def cepstral_lifter(num_ceps: int, lifter: float = LIFTER) -> torch.Tensor:
    """Kaldi's cepstral lifter weights 1 + L/2 sin(pi n / L), n = 0 .. num_ceps - 1 (float32, made in float64)."""
    n = torch.arange(num_ceps, dtype=torch.float64)
    return (1.0 + 0.5 * lifter * torch.sin(math.pi * n / lifter)).float()


def frame_counts(lengths: list[int], window: int, hop: int) -> list[int]:
    return [0 if n < window else 1 + (n - window) // hop for n in lengths]


def log_mel(frames: torch.Tensor | list[torch.Tensor], sample_rate: int, num_mel_bins: int) -> torch.Tensor:
    """(frames, window) raw samples -> Kaldi log-mel energies (frames, num_mel_bins). frames may be a list of
    pieces (e.g. unfold views of several files): each step writes into one zero-padded (frames, 512) buffer, so
    neither the stacking nor the FFT's padding costs a pass of its own.

    The per-frame steps keep torchaudio's order of operations (float32 frame mean, then pre-emphasis with the
    first sample repeated), which keeps the result within float32 rounding of the per-utterance path."""
    pieces = frames if isinstance(frames, list) else [frames]
    window, device = pieces[0].shape[1], pieces[0].device
    padded, povey, banks_t, _, _ = _constants(sample_rate, window, num_mel_bins, 0, device)
    if len(pieces) > 1 and device.type == "cuda":  # on CUDA one launch over the stacked batch beats one per piece
        pieces = [torch.cat(pieces)]
    buffer = torch.empty(sum(p.shape[0] for p in pieces), padded, device=device)
    buffer[:, window:] = 0.0  # the FFT's zero padding
    centred = buffer[:, :window]
    start = 0
    for piece in pieces:  # DC removal writes each piece into the batch (the mean summed in float64, see above)
        torch.sub(piece, frame_means(piece), out=centred[start : start + piece.shape[0]])
        start += piece.shape[0]
    # Pre-emphasis in place: the shifted term is taken first; multiply, then subtract (sub's alpha would fuse them
    # and round differently from torchaudio); the first sample is its own predecessor.
    shifted = PREEMPHASIS * centred[:, :-1]
    centred[:, 1:] -= shifted
    centred[:, 0] -= shifted[:, 0]
    centred.mul_(povey)
    spectrum = torch.view_as_real(torch.fft.rfft(buffer)).square_()  # (frames, bins, 2)
    power = spectrum[..., 0] + spectrum[..., 1]  # not .sum(-1): a reduction over 2 elements is 10x slower
    return (power @ banks_t).clamp_(min=torch.finfo(torch.float32).eps).log_()


def frame_means(frames: torch.Tensor) -> torch.Tensor:
    """(frames, window) -> (frames, 1) float32: each frame's mean, summed in float64 and rounded, so that it does not
    depend on the vector width of the CPU's reduction kernel. Frames cut from one signal (an unfold view: rows
    `hop` samples apart) are summed from blocks of gcd(hop, window) samples, each sample summed once rather than
    window / hop times (a float64 sum over every frame cost the features stage 12-20 %)."""
    count, window = frames.shape
    hop = frames.stride(0)
    block = math.gcd(hop, window) if frames.stride(1) == 1 and 0 < hop < window else 0
    if count < 2 or block < window // 8:  # not an overlapping unfold view, or blocks too small to save anything
        return frames.mean(dim=1, keepdim=True, dtype=torch.float64).float()
    signal = frames.as_strided(((count - 1) * hop + window,), (1,))
    blocks = signal.double().view(-1, block).sum(dim=1)  # (blocks,): a float64 copy first is 2x sum(dtype=)
    step, per_frame = hop // block, window // block
    sums = blocks[0 : (count - 1) * step + 1 : step].clone()
    for offset in range(1, per_frame):  # added in block order, elementwise: the same on every CPU
        sums += blocks[offset : offset + (count - 1) * step + 1 : step]
    return (sums / window).float().unsqueeze(1)


def mfcc(frames: torch.Tensor | list[torch.Tensor], sample_rate: int, num_mel_bins: int, num_ceps: int) -> torch.Tensor:
    """(frames, window) raw samples (or a list of pieces) -> Kaldi MFCC without energy (frames, num_ceps)."""
    first = frames[0] if isinstance(frames, list) else frames
    _, _, _, dct, lifter = _constants(sample_rate, first.shape[-1], num_mel_bins, num_ceps, first.device)
    return (log_mel(frames, sample_rate, num_mel_bins) @ dct).mul_(lifter)


def edge_clamped_neighbours(counts: list[int], width: int, device: torch.device) -> torch.Tensor:
    """(frames, 2 * width + 1): for every stacked frame, the indices of the frames -width .. width away, clamped
    inside its own utterance."""
    counts_t = torch.tensor(counts, device=device)
    starts = torch.cumsum(counts_t, 0) - counts_t
    first = torch.repeat_interleave(starts, counts_t)
    last = first + torch.repeat_interleave(counts_t - 1, counts_t)
    positions = torch.arange(int(counts_t.sum()), device=device)
    offsets = torch.arange(-width, width + 1, device=device)
    return torch.minimum(torch.maximum(positions[:, None] + offsets, first[:, None]), last[:, None])


def deltas(features: torch.Tensor, counts: list[int], width: int = 2) -> torch.Tensor:
    """torchaudio.functional.compute_deltas (window 2 * width + 1, edges replicated) of stacked
    (frames, dim) features, each utterance replicating its own first and last frames."""
    neighbours = edge_clamped_neighbours(counts, width, features.device)  # once, not once per offset
    out = torch.zeros_like(features)
    for n in range(1, width + 1):
        out += n * (features[neighbours[:, width + n]] - features[neighbours[:, width - n]])
    return out / (width * (width + 1) * (2 * width + 1) / 3)
