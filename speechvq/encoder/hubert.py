"""Masked prediction (HuBERT): predict the units of an earlier run at masked frames from their context.

The shared Transformer encoder (transformer.py: front end to 50 Hz, masked frames replaced by a learned
embedding, convolutional position embedding, pre-norm Transformer); a projection whose cosine similarity with
learned codeword embeddings, over a temperature, gives the logits (HuBERT's formulation). The loss is
cross-entropy on masked frames, plus an optional weight on the unmasked ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batches import aligned_crops, narrowband, span_mask
from .transformer import FRAME_HOP, TransformerEncoder


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


class MaskedPredictionModel(TransformerEncoder):
    """The `masked_prediction` objective's model."""

    needs_targets = True

    @classmethod
    def from_config(cls, config, sample_rate: int, num_units: int | None = None) -> MaskedPredictionModel:
        """config: TrainEncoderConfig; num_units: the size of the target units' codebook."""
        o = config.objective
        return cls(o.dim, o.layers, o.heads, num_units, o.proj_dim, o.temperature, sample_rate, o.front_end)

    def __init__(self, dim: int, layers: int, heads: int, num_units: int, proj_dim: int = 256,
                 temperature: float = 0.1, sample_rate: int = 16000, front_end: str = "logmel"):  # fmt: skip
        super().__init__(dim, layers, heads, sample_rate, front_end)
        self.temperature = temperature
        self.project = nn.Linear(dim, proj_dim)
        self.codewords = nn.Parameter(torch.randn(num_units, proj_dim) * 0.1)

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
        x = self.masked_input(x, mask)
        return masked_prediction_loss(self.logits(self.context(x, valid)), targets, mask, valid, unmasked_weight)

    # ---------------------------------------------------------------- the interface train.py and features use
    def training_loss(self, waves, labels, segment, config, step, generator, device_generator, device):
        """Crops on the 20 ms grid with their targets, span masks: (loss, stats for the history)."""
        crops, targets, target_valid = aligned_crops(waves, labels, segment, FRAME_HOP, generator)
        crops = narrowband(crops, config.narrowband_share, self.sample_rate, generator)
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
