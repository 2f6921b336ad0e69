"""Masked prediction (HuBERT): predict the units of an earlier run at masked frames from their context.

Front end: Kaldi 80-bin log-mel at 100 Hz (as BEST-RQ and w2v-BERT use), a stride-2 convolution to 50 Hz,
layer norm; masked frames are replaced by a learned embedding; a convolutional position embedding; a
pre-norm Transformer; a projection whose cosine similarity with learned codeword embeddings, over a
temperature, gives the logits (HuBERT's formulation). The loss is cross-entropy on masked frames, plus an
optional weight on the unmasked ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..features import kaldi_batched
from .batches import aligned_crops, span_mask

LOGMEL_BINS = 80
WINDOW, HOP = 400, 160  # 25 / 10 ms at 16 kHz
SUBSAMPLE = 2  # 100 Hz log-mel -> 50 Hz frames


@dataclass
class MaskedPredictionOutput:
    loss: torch.Tensor  # scalar
    masked_accuracy: float  # share of masked frames whose most likely unit is the target
    num_masked: int


def masked_prediction_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, unmasked_weight: float = 0.0
) -> MaskedPredictionOutput:
    """logits (batch, frames, num_units), targets (batch, frames) int64, mask / valid (batch, frames) bool.
    Mean cross-entropy over masked valid frames, plus unmasked_weight x the mean over unmasked valid frames."""
    masked, unmasked = mask & valid, ~mask & valid
    loss = F.cross_entropy(logits[masked], targets[masked]) if masked.any() else logits.sum() * 0.0
    if unmasked_weight > 0 and unmasked.any():
        loss = loss + unmasked_weight * F.cross_entropy(logits[unmasked], targets[unmasked])
    hits = (logits[masked].argmax(-1) == targets[masked]).float().mean() if masked.any() else torch.tensor(0.0)
    return MaskedPredictionOutput(loss, float(hits), int(masked.sum()))


class ConvPositionEmbedding(nn.Module):
    """wav2vec 2.0's relative position embedding: a wide grouped convolution over time, GELU, added."""

    def __init__(self, dim: int, kernel: int = 31, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (batch, frames, dim); padded frames are zeroed first, so a frame sees the same context alone or in
        a batch (zeros beyond the utterance either way)."""
        x = x * valid.unsqueeze(-1)
        return x + F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2))


class MaskedPredictionModel(nn.Module):
    """The `masked_prediction` objective's model."""

    needs_targets = True

    @classmethod
    def from_config(cls, config, sample_rate: int, num_units: int | None = None) -> MaskedPredictionModel:
        """config: TrainEncoderConfig; num_units: the size of the target units' codebook."""
        o = config.objective
        return cls(o.dim, o.layers, o.heads, num_units, o.proj_dim, o.temperature, sample_rate)

    def __init__(self, dim: int, layers: int, heads: int, num_units: int, proj_dim: int = 256,
                 temperature: float = 0.1, sample_rate: int = 16000):  # fmt: skip
        super().__init__()
        if sample_rate != 16000:
            raise ValueError("the log-mel front end is set up for 16 kHz audio")
        self.sample_rate, self.temperature = sample_rate, temperature
        self.subsample = nn.Conv1d(LOGMEL_BINS, dim, SUBSAMPLE, stride=SUBSAMPLE)
        self.front_norm = nn.LayerNorm(dim)
        self.mask_embedding = nn.Parameter(torch.randn(dim) * 0.1)
        self.position = ConvPositionEmbedding(dim)
        # No dropout: its draws would come from the global generator, and a resumed run would differ.
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, proj_dim)
        self.codewords = nn.Parameter(torch.randn(num_units, proj_dim) * 0.1)

    frame_rate_hz = 50.0

    def num_frames(self, num_samples: int) -> int:
        logmel = 0 if num_samples < WINDOW else 1 + (num_samples - WINDOW) // HOP
        return logmel // SUBSAMPLE

    def front_end(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms of any lengths -> (batch, frames, dim) 50 Hz frames, zero-padded, and the valid mask."""
        device = self.subsample.weight.device
        outs = []
        for wave in waveforms:
            frames = self.num_frames(wave.numel())
            if frames == 0:
                outs.append(torch.zeros(0, self.subsample.out_channels, device=device))
                continue
            windows = wave.to(device).unfold(0, WINDOW, HOP)[: frames * SUBSAMPLE]
            logmel = kaldi_batched.log_mel(windows, self.sample_rate, LOGMEL_BINS)  # (2 frames, 80)
            outs.append(self.front_norm(self.subsample(logmel.T.unsqueeze(0))[0].T))
        lengths = torch.tensor([o.shape[0] for o in outs], device=device)
        padded = nn.utils.rnn.pad_sequence(outs, batch_first=True)
        valid = torch.arange(padded.shape[1], device=device).unsqueeze(0) < lengths.unsqueeze(1)
        return padded, valid

    def context(self, x: torch.Tensor, valid: torch.Tensor, num_layers: int | None = None) -> torch.Tensor:
        """The output of Transformer layer num_layers (all layers and the final norm when None)."""
        x = self.position(x, valid)
        layers = self.layers.layers if num_layers is None else self.layers.layers[:num_layers]
        for layer in layers:
            x = layer(x, src_key_padding_mask=~valid)
        return self.final_norm(x) if num_layers is None else x

    def logits(self, context: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.project(context), dim=-1)
        return projected @ F.normalize(self.codewords, dim=-1).T / self.temperature

    def forward(
        self,
        waveforms: list[torch.Tensor],
        targets: torch.Tensor,
        mask: torch.Tensor,
        target_valid: torch.Tensor | None = None,
        unmasked_weight: float = 0.0,
    ) -> MaskedPredictionOutput:
        """targets, mask, target_valid (batch, frames) at 50 Hz; frames without audio or target are ignored."""
        x, valid = self.front_end(waveforms)
        frames = min(x.shape[1], targets.shape[1])
        x, valid, targets, mask = x[:, :frames], valid[:, :frames], targets[:, :frames], mask[:, :frames]
        if target_valid is not None:
            valid = valid & target_valid[:, :frames]
        x = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        return masked_prediction_loss(self.logits(self.context(x, valid)), targets, mask, valid, unmasked_weight)

    # ---------------------------------------------------------------- the interface train.py and features use
    def training_loss(self, waves, labels, segment, config, step, generator, device_generator, device):
        """Crops on the 20 ms grid with their targets, span masks: (loss, stats for the history)."""
        crops, targets, target_valid = aligned_crops(waves, labels, segment, HOP * SUBSAMPLE, generator)
        o = config.objective
        masks = [span_mask(self.num_frames(c.numel()), o.mask_prob, o.mask_span, generator) for c in crops]
        mask = nn.utils.rnn.pad_sequence(masks, batch_first=True)
        device_targets = targets.to(device), mask.to(device), target_valid.to(device)
        out = self(crops, *device_targets, unmasked_weight=o.unmasked_weight)
        return out.loss, {"masked_accuracy": out.masked_accuracy}

    @torch.no_grad()
    def validation_loss(self, waves, labels, segment, config, device) -> float:
        generator = torch.Generator().manual_seed(0)
        return float(self.training_loss(waves, labels, segment, config, 0, generator, None, device)[0])

    @property
    def feature_dim(self) -> int:
        return self.subsample.out_channels

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer <= len(self.layers.layers):
            raise ConfigError("features.layer", layer, f"0 (front end) .. {len(self.layers.layers)} for this model")

    @torch.inference_mode()
    def layer_features(self, waveforms: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
        """Layer `layer` (1-based; 0 = the front end) of unmasked audio, one (frames, dim) tensor per waveform."""
        x, valid = self.front_end(waveforms)
        out = x if layer == 0 else self.context(x, valid, layer)
        return [out[i, : int(n)].float() for i, n in enumerate(valid.sum(1))]
