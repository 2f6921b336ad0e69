"""Log-mel spectrograms rebuilt from features (original or quantized), for reconstruction metrics and
listening. The target is the same for every method: reference_logmel (Kaldi 80-bin log-mel at 100 Hz)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance import kaldi

from .features.base import PER_UTTERANCE
from .features.kaldi_batched import cepstral_lifter
from .registry import Registry

__all__ = ["build_inversion", "logmel_distances", "mel_cepstral_distortion", "griffin_lim", "reference_logmel"]

LOGMEL_BINS = 80
LOGMEL_RATE_HZ = 100.0


def reference_logmel(samples: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """The reconstruction target shared by every method: Kaldi 80-bin log-mel, 25/10 ms, (num_frames, 80)."""
    if samples.numel() < round(0.025 * sample_rate):
        return samples.new_zeros((0, LOGMEL_BINS))
    return kaldi.fbank(samples.view(1, -1), sample_frequency=sample_rate, num_mel_bins=LOGMEL_BINS)


_PADDED_WINDOW = 512  # Kaldi pads a 400-sample window to the next power of two


def _kaldi_banks(num_bins: int, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    banks, centres = kaldi.get_mel_banks(num_bins, _PADDED_WINDOW, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    return banks, centres.squeeze(1)  # (bins, 256) weights, centre frequencies on the mel scale


def _remap_bins(logmel: torch.Tensor, from_bins: int, sample_rate: int) -> torch.Tensor:
    """Kaldi log-mel energies with from_bins filters -> LOGMEL_BINS filters: divide by filter area (energy per
    FFT bin), interpolate along the mel axis, multiply by the new filters' area."""
    if from_bins == LOGMEL_BINS:
        return logmel
    src_banks, src_centres = _kaldi_banks(from_bins, sample_rate)
    dst_banks, dst_centres = _kaldi_banks(LOGMEL_BINS, sample_rate)
    density = logmel - src_banks.sum(1).log()
    position = torch.bucketize(dst_centres, src_centres).clamp(1, from_bins - 1)
    left, right = src_centres[position - 1], src_centres[position]
    weight = ((dst_centres - left) / (right - left)).clamp(0, 1)
    interpolated = density[:, position - 1] * (1 - weight) + density[:, position] * weight
    return interpolated + dst_banks.sum(1).log()


def _kaldi_mfcc_to_logmel(cepstra: torch.Tensor, num_mel_bins: int) -> torch.Tensor:
    """Undo Kaldi's cepstral lifter and truncated orthonormal DCT: the smoothed log-mel the cepstra describe."""
    num_ceps = cepstra.shape[1]
    dct = torchaudio.functional.create_dct(num_mel_bins, num_mel_bins, "ortho")[:, :num_ceps]
    return (cepstra / cepstral_lifter(num_ceps)) @ dct.T


class Inversion:
    """Raw feature frames (num_frames, dim) -> log-mel (num_logmel_frames, 80) for one feature family; `create`
    returns None where a configuration of the family cannot be inverted."""

    @classmethod
    def create(cls, feature_config: dict) -> Inversion | None:
        return cls(feature_config)

    def __init__(self, feature_config: dict):
        self.feature_config = feature_config
        self.rate = feature_config["sample_rate"]

    def logmel(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mcd(self, frames: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor | None:
        """Per-frame mel-cepstral distortion (dB) where the features are cepstra; None elsewhere."""
        return None


class KaldiMFCCInversion(Inversion):
    """Inverse DCT of the static cepstra (lifter undone), remapped from num_mel_bins to 80 bands."""

    def logmel(self, frames: torch.Tensor) -> torch.Tensor:
        ceps, bins = self.feature_config["num_ceps"], self.feature_config["num_mel_bins"]
        return _remap_bins(_kaldi_mfcc_to_logmel(frames[:, :ceps].cpu(), bins), bins, self.rate)

    def mcd(self, frames: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        ceps, bins = self.feature_config["num_ceps"], self.feature_config["num_mel_bins"]
        return mel_cepstral_distortion(frames[:, :ceps], estimate[:, :ceps], bins)


class FbankInversion(Inversion):
    """The log-mel itself, remapped to 80 bands; per-utterance normalization cannot be undone."""

    @classmethod
    def create(cls, feature_config: dict) -> Inversion | None:
        return None if feature_config.get("normalize") in PER_UTTERANCE else cls(feature_config)

    def logmel(self, frames: torch.Tensor) -> torch.Tensor:
        return _remap_bins(frames.cpu(), self.feature_config["num_mel_bins"], self.rate)


class DecoderInversion(Inversion):
    """The trained encoder's own log-mel decoder (features=encoder, the reconstruction objective)."""

    @classmethod
    def create(cls, feature_config: dict) -> Inversion | None:
        from .encoder.checkpoint import load_encoder

        model = load_encoder(feature_config["checkpoint"])[0]
        return cls(feature_config, model.decoder.cpu()) if hasattr(model, "decoder") else None

    def __init__(self, feature_config: dict, decoder: torch.nn.Module):
        super().__init__(feature_config)
        self.decoder = decoder

    @torch.inference_mode()
    def logmel(self, frames: torch.Tensor) -> torch.Tensor:
        target_frames = 2 * frames.shape[0] + 1  # decoder output at 100 Hz, cropped to the reference later
        return self.decoder(frames.cpu().unsqueeze(0), target_frames)[0].float()


INVERSIONS = Registry("features.name")  # feature families whose frames can be turned back into a log-mel
INVERSIONS.register("mfcc_hubert", "speechvq.reconstruct:KaldiMFCCInversion")
INVERSIONS.register("fbank", "speechvq.reconstruct:FbankInversion")
INVERSIONS.register("encoder", "speechvq.reconstruct:DecoderInversion")


def build_inversion(feature_config: dict) -> Inversion | None:
    """The inversion of the feature family, or None where none is defined (librosa-style mfcc, ssl)."""
    family = INVERSIONS.find(feature_config["name"])
    return family.create(feature_config) if family else None


def logmel_distances(reference: torch.Tensor, estimate: torch.Tensor) -> dict[str, float]:
    """Sums over the overlapping frames: L1 and squared error per element, and the spectral-convergence parts
    ||S - S^||_F^2 and ||S||_F^2 on the mel magnitude (exp of the log-mel / 2)."""
    frames = min(reference.shape[0], estimate.shape[0])
    ref, est = reference[:frames].double(), estimate[:frames].double()
    mag_ref, mag_est = (ref / 2).exp(), (est / 2).exp()
    return {
        "l1_sum": float((ref - est).abs().sum()),
        "l2_sum": float((ref - est).square().sum()),
        "sc_num": float((mag_ref - mag_est).square().sum()),
        "sc_den": float(mag_ref.square().sum()),
        "elements": frames * ref.shape[1],
    }


def mel_cepstral_distortion(cepstra: torch.Tensor, estimate: torch.Tensor, num_mel_bins: int) -> torch.Tensor:
    """Per-frame MCD in dB, (10 / ln 10) sqrt(2 sum_{d>=1} (c_d - c^_d)^2), excluding c0 (level), between
    Kaldi MFCCs. They are first brought to the usual mel-cepstrum convention: Kaldi's lifter undone, and its
    orthonormal DCT of log *power* turned into c_d = (2/N) sum_n (1/2 log E_n) cos(...) of log *amplitude*,
    which is the Kaldi coefficient divided by sqrt(2N)."""
    scale = cepstral_lifter(cepstra.shape[1]) * math.sqrt(2 * num_mel_bins)
    diff = ((cepstra.cpu() - estimate.cpu()) / scale)[:, 1:].double()
    return (10.0 / math.log(10.0)) * (2.0 * diff.square().sum(1)).sqrt()


def griffin_lim(logmel: torch.Tensor, sample_rate: int = 16000, iterations: int = 48) -> torch.Tensor:
    """An audible (not high-fidelity) waveform from an 80-bin Kaldi log-mel: least-squares inverse of the
    filterbank, then Griffin-Lim phase recovery. Peak-normalized to 0.9."""
    banks, _ = _kaldi_banks(logmel.shape[1], sample_rate)  # (80, 256)
    power = torch.linalg.pinv(banks.double()).float() @ logmel.exp().T.cpu()  # (256, frames)
    magnitude = F.pad(power.clamp(min=0).sqrt(), (0, 0, 0, 1))  # add the Nyquist bin -> 257
    wave = torchaudio.transforms.GriffinLim(
        n_fft=_PADDED_WINDOW, win_length=400, hop_length=160, power=1.0, n_iter=iterations
    )(magnitude)
    return 0.9 * wave / wave.abs().max().clamp(min=1e-8)
