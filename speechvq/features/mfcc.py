"""Cepstral and filterbank features.

mfcc_hubert reproduces fairseq's HuBERT iteration-1 recipe (examples/hubert/simple_kmeans/dump_mfcc_feature.py):
Kaldi MFCC without energy, then deltas and delta-deltas from torchaudio.functional.compute_deltas.
mfcc follows librosa.feature.mfcc conventions (Slaney mel, power->dB with an 80 dB floor, ortho DCT-II)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torchaudio

from ..config import FeatureConfig
from ..errors import ConfigError
from . import kaldi_batched
from .base import normalized_as_configured


class _FrameExtractor:
    """Shared frame arithmetic, delta stacking and per-utterance normalization."""

    needs_weights = False
    checkpoint_defaults_to_run = False
    takes_layer_lists = False  # features.layer means nothing here

    def __init__(self, config: FeatureConfig, static_dim: int, deltas: bool):
        self.config = config
        self.deltas = deltas
        self.window = round(config.sample_rate * config.frame_length_ms / 1000)
        self.hop = round(config.sample_rate * config.frame_shift_ms / 1000)
        self.frame_rate_hz = config.sample_rate / self.hop
        self.static_dim = static_dim
        self.dim = static_dim * (3 if deltas else 1)

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        num_frames = self.num_frames(samples.numel())
        if num_frames == 0:
            return samples.new_zeros((0, self.dim))
        frames = self._static(samples)  # (num_frames, static_dim)
        if self.deltas:
            frames = _with_deltas(frames)
        return normalized_as_configured([frames], self.config.normalize)[0].contiguous()

    def _static(self, samples: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Many utterances -> their frames; families with a batched implementation override this."""
        return [self(w) for w in waveforms]

    def describe(self) -> dict:
        return self.config.to_dict()

    def num_frames(self, num_samples: int) -> int:
        # Kaldi's snip_edges=True: only whole windows.
        return 0 if num_samples < self.window else 1 + (num_samples - self.window) // self.hop


def _check_cepstra(config: FeatureConfig) -> None:
    if config.num_ceps > config.num_mel_bins:
        raise ConfigError(
            "features.num_ceps", config.num_ceps, f"must not exceed features.num_mel_bins={config.num_mel_bins}"
        )


def _with_deltas(frames: torch.Tensor) -> torch.Tensor:
    static = frames.T  # compute_deltas works along the last axis (time)
    deltas = torchaudio.functional.compute_deltas(static)
    delta_deltas = torchaudio.functional.compute_deltas(deltas)
    return torch.cat([static, deltas, delta_deltas], dim=0).T


class _KaldiBatched(_FrameExtractor):
    """Kaldi features computed for a whole batch at once (kaldi_batched), equal to the per-utterance
    torchaudio.compliance.kaldi path (+ compute_deltas) to float32 rounding."""

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return self.extract_batch([samples])[0]

    def _static_batch(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """Pieces of (frames, window) analysis windows, stacked -> (total_frames, static_dim)."""
        raise NotImplementedError

    # Frames per pass of the static features. On the CPU, slices that fit in cache make the elementwise steps
    # (DC removal, pre-emphasis, window, power) several times faster than whole-batch passes: one frame per KiB of
    # each core's L2, at most 1,024, per thread. Measured on 600 s of speech: on the Intel Xeon (1 MiB L2), 2,048
    # frames best with 2 threads, 1,024 with 1 (13 % faster there than 2,048); on the AMD EPYC (512 KiB L2), 1,024
    # with 2 threads (0.095-0.12 s against 0.11-0.26 s for 2,048), 512-768 with 1; 32,768 frames no faster than the
    # per-utterance recipe. On CUDA, large passes keep the GPU busy. Either way memory is bounded however long a
    # file is.
    max_frames_per_pass: int | None = None

    def _frames_per_pass(self, device: torch.device) -> int:
        if self.max_frames_per_pass:
            return self.max_frames_per_pass
        if device.type == "cuda":
            return 1 << 17
        return min(1024, _l2_cache_bytes() // 1024) * torch.get_num_threads()

    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        if not waveforms:
            return []
        counts = kaldi_batched.frame_counts([w.numel() for w in waveforms], self.window, self.hop)
        if not sum(counts):  # every utterance shorter than one window
            return [waveforms[0].new_zeros((0, self.dim)) for _ in counts]
        # Static features are per frame, so they are computed over slices of the stacked windows (a long file is
        # cut into several slices); deltas then run over each utterance's whole static sequence.
        statics, pending, pending_frames = [], [], 0
        per_pass = self._frames_per_pass(waveforms[0].device)
        for wave, count in zip(waveforms, counts):
            view = wave.unfold(0, self.window, self.hop) if count else None  # (count, window), no copy
            for start in range(0, count, per_pass):
                piece = view[start : start + per_pass]
                pending.append(piece)
                pending_frames += piece.shape[0]
                if pending_frames >= per_pass:
                    statics.append(self._static_batch(pending))
                    pending, pending_frames = [], 0
        if pending:
            statics.append(self._static_batch(pending))
        frames = torch.cat(statics) if len(statics) > 1 else statics[0]
        if self.deltas and frames.shape[0]:
            first = kaldi_batched.deltas(frames, counts)
            frames = torch.cat([frames, first, kaldi_batched.deltas(first, counts)], dim=1)
        return normalized_as_configured(list(frames.split(counts)), self.config.normalize)


@functools.lru_cache(maxsize=1)
def _l2_cache_bytes() -> int:
    """The size of one core's L2 cache as Linux reports it; 1 MiB where it does not."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()  # e.g. "512K"
                return int(size.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        except (OSError, ValueError):
            break
    return 1 << 20


class KaldiMFCCExtractor(_KaldiBatched):
    """fairseq's HuBERT recipe: Kaldi MFCC (no energy) + deltas + delta-deltas."""

    def __init__(self, config: FeatureConfig):
        _check_cepstra(config)
        super().__init__(config, config.num_ceps, config.deltas)

    def _static_batch(self, frames: list[torch.Tensor]) -> torch.Tensor:
        return kaldi_batched.mfcc(frames, self.config.sample_rate, self.config.num_mel_bins, self.config.num_ceps)


class FbankExtractor(_KaldiBatched):
    """Kaldi log-mel filterbank (num_mel_bins wide, no deltas)."""

    def __init__(self, config: FeatureConfig):
        super().__init__(config, config.num_mel_bins, deltas=False)

    def _static_batch(self, frames: list[torch.Tensor]) -> torch.Tensor:
        return kaldi_batched.log_mel(frames, self.config.sample_rate, self.config.num_mel_bins)


class LibrosaMFCCExtractor(_FrameExtractor):
    """torchaudio.transforms.MFCC set up to equal
    librosa.feature.mfcc(y, sr, n_mfcc, n_fft=window, hop_length, n_mels)."""

    def __init__(self, config: FeatureConfig):
        _check_cepstra(config)
        super().__init__(config, config.num_ceps, config.deltas)
        self.transform = torchaudio.transforms.MFCC(
            sample_rate=config.sample_rate,
            n_mfcc=config.num_ceps,
            norm="ortho",
            log_mels=False,
            melkwargs={
                "n_fft": self.window,
                "hop_length": self.hop,
                "n_mels": config.num_mel_bins,
                "mel_scale": "slaney",
                "norm": "slaney",
                "center": True,
                "pad_mode": "constant",
            },
        )

    def _static(self, samples: torch.Tensor) -> torch.Tensor:
        if self.transform.dct_mat.device != samples.device:
            self.transform = self.transform.to(samples.device)
        return self.transform(samples).T

    def num_frames(self, num_samples: int) -> int:
        # center=True pads half a window on each side.
        return 0 if num_samples == 0 else 1 + num_samples // self.hop
