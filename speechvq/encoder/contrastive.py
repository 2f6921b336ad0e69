"""Contrastive prediction (wav2vec 2.0): at each masked frame, pick the quantized target of that frame out of
distractors drawn from the other masked frames of the same utterance.

The shared Transformer encoder (transformer.py) reads the masked front-end frames; the targets are the unmasked
front-end frames through the Gumbel G x V quantizer (train_encoder.quantizer, name gumbel), projected. Logits are
cosine similarities over a temperature; a distractor equal to the target is left out (its logit is -inf). The
loss adds the quantizer's diversity loss and a penalty on the squared front-end frames (wav2vec 2.0's feature
penalty)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .batches import grid_crops, narrowband, span_mask
from .model import gumbel_temperature
from .quantizers import GumbelVQ, build_quantizer
from .transformer import FRAME_HOP, TransformerEncoder


def sample_distractors(num_masked: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(num_masked, count) indices into the utterance's masked frames, never the frame's own (wav2vec 2.0
    draws uniformly from the other masked frames, with replacement)."""
    if num_masked < 2:
        return torch.zeros(num_masked, 0, dtype=torch.long)
    draws = torch.randint(num_masked - 1, (num_masked, count), generator=generator)
    own = torch.arange(num_masked).unsqueeze(1)
    return draws + (draws >= own).long()  # skip over the frame itself


def contrastive_logits(
    context: torch.Tensor, targets: torch.Tensor, distractors: torch.Tensor, temperature: float
) -> torch.Tensor:
    """context, targets (frames, dim); distractors (frames, count, dim) -> (frames, 1 + count) logits, the true
    target first: cosine similarity / temperature, -inf where a distractor equals the target."""
    candidates = torch.cat([targets.unsqueeze(1), distractors], dim=1)
    logits = F.cosine_similarity(context.unsqueeze(1).float(), candidates.float(), dim=-1) / temperature
    same = (distractors == targets.unsqueeze(1)).all(dim=-1)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)


class ContrastiveModel(TransformerEncoder):
    """The `contrastive` objective's model."""

    needs_targets = False
    quantizer_layer = 0  # its quantizer reads the front-end frames (features.layer 0) for codebook=encoder

    @classmethod
    def check_config(cls, config) -> None:
        """config: TrainEncoderConfig. Its targets are Gumbel codes, G groups splitting the model's width."""
        quantizer, dim = config.quantizer, config.objective.dim
        if quantizer.name != "gumbel":
            raise ConfigError("train_encoder.quantizer.name", quantizer.name, "the contrastive objective uses gumbel")
        if dim % quantizer.num_codebooks:
            key, reason = "train_encoder.quantizer.num_codebooks", f"must divide objective.dim={dim}"
            raise ConfigError(key, quantizer.num_codebooks, reason)

    @classmethod
    def from_config(cls, config, sample_rate: int, num_units: int | None = None) -> ContrastiveModel:
        """config: TrainEncoderConfig."""
        o = config.objective
        quantizer = build_quantizer(config.quantizer, o.dim)
        if not isinstance(quantizer, GumbelVQ):
            raise ValueError("the contrastive objective uses the gumbel quantizer")
        return cls(o.dim, o.layers, o.heads, quantizer, o.proj_dim, o.temperature, sample_rate, o.front_end)

    def __init__(self, dim: int, layers: int, heads: int, quantizer: GumbelVQ, proj_dim: int = 256,
                 temperature: float = 0.1, sample_rate: int = 16000, front_end: str = "logmel"):  # fmt: skip
        super().__init__(dim, layers, heads, sample_rate, front_end)
        self.temperature = temperature
        self.quantizer = quantizer
        self.project_q = nn.Linear(dim, proj_dim)
        self.final_proj = nn.Linear(dim, proj_dim)

    def training_loss(self, waves, labels, segment, config, step, generator, device_generator, device):
        """Crops, span masks and distractors from `generator`: (loss, stats for the history)."""
        o = config.objective
        self.quantizer.temperature = gumbel_temperature(config, step)
        crops = grid_crops(waves, segment, FRAME_HOP, generator)
        raw, valid = self.front_end_frames(narrowband(crops, config.narrowband_share, self.sample_rate, generator))
        penalty = raw[valid].pow(2).mean()  # on the frames before the layer norm, as wav2vec 2.0 does
        x = self.normalized(raw, valid)
        quantized = self.quantizer(x, device_generator)
        masks = [span_mask(int(n), o.mask_prob, o.mask_span, generator) for n in valid.sum(1)]
        mask = nn.utils.rnn.pad_sequence(masks, batch_first=True).to(device)
        context = self.final_proj(self.context(self.masked_input(x, mask), valid))
        targets = self.project_q(quantized.quantized)
        rows = []
        for b in range(x.shape[0]):
            where = mask[b].nonzero().squeeze(1)
            picks = sample_distractors(where.numel(), o.num_negatives, generator).to(device)
            if picks.shape[1]:
                mine = targets[b, where]
                rows.append(contrastive_logits(context[b, where], mine, mine[picks], self.temperature))
        logits = torch.cat(rows) if rows else torch.zeros(0, 1 + o.num_negatives, device=device)
        contrast = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=device))
        loss = contrast + quantized.loss + o.feature_penalty * penalty
        accuracy = float((logits.argmax(1) == 0).float().mean()) if len(logits) else 0.0
        return loss, {"contrastive_accuracy": accuracy, "perplexity": quantized.stats["perplexity"]}

    @torch.no_grad()
    def validation_loss(self, waves, labels, segment, config, device) -> float:
        generator = torch.Generator().manual_seed(0)
        device_generator = torch.Generator(device=device).manual_seed(0)
        return float(self.training_loss(waves, labels, segment, config, 0, generator, device_generator, device)[0])
