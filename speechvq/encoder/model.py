"""The VQ-VAE on speech: waveform -> conv encoder -> quantizer -> transposed-conv decoder -> log-mel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..reconstruct import LOGMEL_BINS, LOGMEL_RATE_HZ, reference_logmel
from .batches import crop_batch
from .quantizers import QuantizerOutput, build_quantizer


class ConvEncoder(nn.Module):
    """wav2vec 2.0 feature-encoder family: Conv1d stack (no padding) with GELU, GroupNorm after the first layer,
    then a 1x1 projection to the code dimension. Default 7 layers, strides 5*2^6 = 320 -> 20 ms frames."""

    def __init__(self, channels: int, kernels: list[int], strides: list[int], code_dim: int):
        super().__init__()
        if len(kernels) != len(strides):
            raise ValueError(f"{len(kernels)} kernels but {len(strides)} strides")
        self.kernels, self.strides = list(kernels), list(strides)
        layers, in_channels = [], 1
        for number, (kernel, stride) in enumerate(zip(kernels, strides)):
            layers.append(nn.Conv1d(in_channels, channels, kernel, stride, bias=False))
            if number == 0:
                layers.append(nn.GroupNorm(channels, channels))
            layers.append(nn.GELU())
            in_channels = channels
        self.convs = nn.Sequential(*layers)
        self.project = nn.Conv1d(channels, code_dim, 1)

    @property
    def hop(self) -> int:
        hop = 1
        for stride in self.strides:
            hop *= stride
        return hop

    def num_frames(self, num_samples: int) -> int:
        for kernel, stride in zip(self.kernels, self.strides):
            num_samples = (num_samples - kernel) // stride + 1 if num_samples >= kernel else 0
        return max(num_samples, 0)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, num_samples) -> (batch, frames, code_dim)."""
        return self.project(self.convs(waveform.unsqueeze(1))).transpose(1, 2)


class LogMelDecoder(nn.Module):
    """Codes at the encoder rate -> 80-bin log-mel at 100 Hz (transposed conv upsampling by `upsample`)."""

    def __init__(self, code_dim: int, channels: int, upsample: int, n_mels: int = LOGMEL_BINS):
        super().__init__()
        self.upsample = upsample
        self.net = nn.Sequential(
            nn.Conv1d(code_dim, channels, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose1d(channels, channels, 2 * upsample, stride=upsample, padding=upsample // 2)
            if upsample > 1
            else nn.Conv1d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(channels, n_mels, 5, padding=2),
        )

    def forward(self, codes: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(batch, frames, code_dim) -> (batch, num_frames, n_mels), cropped or edge-padded to num_frames."""
        out = self.net(codes.transpose(1, 2))
        if out.shape[-1] < num_frames:
            out = F.pad(out, (0, num_frames - out.shape[-1]), mode="replicate")
        return out[..., :num_frames].transpose(1, 2)


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (batch, logmel_frames, 80) decoded from quantized codes
    target: torch.Tensor  # (batch, logmel_frames, 80)
    quantizer: QuantizerOutput
    reconstruction_loss: torch.Tensor  # L1 on log-mel
    loss: torch.Tensor  # reconstruction + quantizer losses


class VQVAE(nn.Module):
    """The `reconstruction` objective: conv encoder -> quantizer -> log-mel decoder, trained to rebuild the log-mel."""

    needs_targets = False
    data_parallel = False  # its EMA codebook statistics are not synchronised across ranks

    @classmethod
    def check_config(cls, config) -> None:
        """config: TrainEncoderConfig; what only this objective needs of it (nothing beyond the ranges)."""

    @classmethod
    def from_config(cls, config, sample_rate: int, num_units: int | None = None) -> VQVAE:
        """config: TrainEncoderConfig."""
        return cls(config.model, config.quantizer, sample_rate)

    def __init__(self, model_config, quantizer_config, sample_rate: int = 16000):
        super().__init__()
        self.sample_rate = sample_rate
        self.encoder = ConvEncoder(
            model_config.channels, model_config.kernels, model_config.strides, model_config.code_dim
        )
        self.quantizer = build_quantizer(quantizer_config, model_config.code_dim)
        upsample = round(self.encoder.hop / (sample_rate / LOGMEL_RATE_HZ))
        self.decoder = LogMelDecoder(model_config.code_dim, model_config.decoder_channels, max(upsample, 1))

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.encoder.hop

    def forward(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> VQVAEOutput:
        """waveform (batch, num_samples) of equal-length crops."""
        with torch.no_grad():
            target = torch.stack([reference_logmel(w, self.sample_rate) for w in waveform.float()])
        z = self.encoder(waveform)
        quantized = self.quantizer(z, generator)
        reconstruction = self.decoder(quantized.quantized, target.shape[1])
        recon_loss = F.l1_loss(reconstruction.float(), target)
        return VQVAEOutput(reconstruction, target, quantized, recon_loss, recon_loss + quantized.loss)

    # ---------------------------------------------------------------- the interface train.py and features use
    def training_loss(self, waves, labels, segment, config, step, generator, device_generator, device):
        """One batch of random crops of `waves` at training step `step`: (loss, stats for the history)."""
        if hasattr(self.quantizer, "temperature"):
            self.quantizer.temperature = gumbel_temperature(config, step)
        batch = crop_batch(waves, segment, generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = self(batch, device_generator)
        stats = {
            "reconstruction": out.reconstruction_loss.item(),
            **{k: float(v) for k, v in out.quantizer.stats.items()},
        }
        return out.loss, stats

    @torch.no_grad()
    def validation_loss(self, waves, labels, segment, config, device) -> float:
        batch = crop_batch(waves, segment, torch.Generator().manual_seed(0)).to(device)
        return float(self(batch).reconstruction_loss)

    @property
    def feature_dim(self) -> int:
        return self.encoder.project.out_channels

    def check_layer(self, layer: int) -> None:
        """The conv encoder has one output: every features.layer means it."""

    def num_frames(self, num_samples: int) -> int:
        return self.encoder.num_frames(num_samples)

    @torch.inference_mode()
    def layer_features(self, waveforms: list[torch.Tensor], layer: int | list[int]) -> list[torch.Tensor]:
        """The pre-quantization frames of each waveform (the conv encoder has one output; layer is ignored)."""
        device = next(self.parameters()).device
        return [
            self.encoder(w.to(device).view(1, -1))[0].float()
            if self.num_frames(w.numel())
            else torch.zeros(0, self.feature_dim, device=device)
            for w in waveforms
        ]


def gumbel_temperature(config, step: int) -> float:
    """config: TrainEncoderConfig. Annealed from start to end, reached at 70 % of training."""
    start, end = config.quantizer.gumbel_temperature
    decay = (end / start) ** (1.0 / max(1, int(0.7 * config.steps)))
    return max(start * decay**step, end)
