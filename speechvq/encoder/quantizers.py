"""Trainable quantizers with one typed result each.

All take z (batch, frames, dim) and return QuantizerOutput; indices are (batch, frames, num_codebooks) so a
single-codebook and a multi-codebook quantizer look the same to the caller."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..codebook.kmeans import kmeans
from ..quantize import nearest_codewords
from ..registry import Registry


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (batch, frames, dim), straight-through: gradients reach z unchanged
    indices: torch.Tensor  # (batch, frames, num_codebooks) int64
    loss: torch.Tensor  # scalar: commitment / diversity terms to add to the reconstruction loss
    stats: dict[str, float] = field(default_factory=dict)  # perplexity, usage, ...


def _perplexity(indices: torch.Tensor, size: int) -> float:
    counts = torch.bincount(indices.reshape(-1), minlength=size).double()
    p = counts / counts.sum().clamp(min=1)
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


class VectorQuantizerEMA(nn.Module):
    """Nearest-codeword VQ (VQ-VAE) with EMA codebook updates, commitment loss and straight-through gradients.

    The codebook is initialised by k-means on the first batch, and a code unused for `dead_code_steps`
    training steps is re-seeded from a random recent encoder output (0 disables the restart)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.99,
        commitment: float = 0.25,
        dead_code_steps: int = 50,
        kmeans_init: bool = True,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.commitment, self.dead_code_steps, self.eps = decay, commitment, dead_code_steps, eps
        self.register_buffer("codebook", torch.randn(codebook_size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    num_codebooks = 1

    @classmethod
    def from_config(cls, config, dim: int) -> VectorQuantizerEMA:
        return cls(dim, config.codebook_size, **_vq_options(config))

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., dim) -> indices (...,) of the nearest codeword."""
        flat = z.reshape(-1, self.dim).float()
        indices, _ = nearest_codewords(flat, self.codebook)
        return indices.clone().view(z.shape[:-1])  # clone: a normal tensor, usable in autograd

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        flat = z.reshape(-1, self.dim).float()
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach(), generator)
        indices = self.encode(z.detach())
        quantized = self.decode(indices).to(z.dtype)
        if self.training:
            self._ema_update(flat.detach(), indices.reshape(-1), generator)
        commit = F.mse_loss(z, quantized.detach())
        stats = {
            "perplexity": _perplexity(indices, self.codebook_size),
            "usage": float(indices.unique().numel() / self.codebook_size),
        }
        return QuantizerOutput(z + (quantized - z).detach(), indices.unsqueeze(-1), self.commitment * commit, stats)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor, generator: torch.Generator | None) -> None:
        generator = generator or torch.Generator(device=flat.device).manual_seed(0)
        if flat.shape[0] >= self.codebook_size:
            centroids = kmeans(flat, self.codebook_size, generator=generator, max_iter=20, n_init=1).centroids
        else:
            centroids = flat[
                torch.randint(flat.shape[0], (self.codebook_size,), generator=generator, device=generator.device).to(
                    flat.device
                )
            ]
        self.codebook.copy_(centroids)
        self.ema_sum.copy_(centroids)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None) -> None:
        one_hot = F.one_hot(indices, self.codebook_size).to(flat.dtype)
        counts = one_hot.sum(0)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(one_hot.T @ flat, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.codebook_size * self.eps) * total  # Laplace
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps > 0:
            dead = (self.steps_unused >= self.dead_code_steps).nonzero().squeeze(1)
            if dead.numel():
                generator = generator or torch.Generator(device=flat.device).manual_seed(int(total) % 2**31)
                pick = torch.randint(flat.shape[0], (dead.numel(),), generator=generator, device=generator.device).to(
                    flat.device
                )
                self.codebook[dead] = flat[pick]
                self.ema_sum[dead] = flat[pick]
                self.ema_count[dead] = 1.0
                self.steps_unused[dead] = 0


class ResidualVQ(nn.Module):
    """n VQ stages, each quantizing what the previous ones left (EnCodec / DAC). With quantizer dropout a
    training batch uses only the first n' ~ U{1..n} stages, so one model serves n bitrates."""

    def __init__(self, dim: int, codebook_size: int, num_stages: int, dropout: bool = True, **vq_kwargs):
        super().__init__()
        self.dim, self.codebook_size, self.num_codebooks, self.dropout = dim, codebook_size, num_stages, dropout
        self.stages = nn.ModuleList(VectorQuantizerEMA(dim, codebook_size, **vq_kwargs) for _ in range(num_stages))
        self.active_stages = num_stages  # set lower at inference for a lower bitrate

    @classmethod
    def from_config(cls, config, dim: int) -> ResidualVQ:
        return cls(dim, config.codebook_size, config.num_codebooks, config.quantizer_dropout, **_vq_options(config))

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        residual, out = z, []
        for stage in self.stages[: self.active_stages]:
            idx = stage.encode(residual)
            residual = residual - stage.decode(idx)
            out.append(idx)
        return torch.stack(out, dim=-1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return sum(stage.decode(indices[..., i]) for i, stage in enumerate(self.stages[: indices.shape[-1]]))

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        used = self.active_stages
        if self.training and self.dropout:
            g = generator if generator is not None else None
            used = int(
                torch.randint(1, self.num_codebooks + 1, (1,), generator=g, device=g.device if g is not None else "cpu")
            )
        residual, codes, losses, indices, stats = z, torch.zeros_like(z), [], [], {}
        for number, stage in enumerate(self.stages[:used]):
            out = stage(residual, generator)
            codeword = out.quantized.detach()  # the straight-through value equals the codeword
            codes = codes + codeword
            residual = residual - codeword  # the next stage quantizes what is left; gradients still reach z
            losses.append(out.loss)
            indices.append(out.indices)
            stats[f"perplexity_{number}"] = out.stats["perplexity"]
            stats[f"usage_{number}"] = out.stats["usage"]
        stats["perplexity"] = stats["perplexity_0"]
        stats["usage"] = sum(stats[f"usage_{i}"] for i in range(used)) / used
        stats["stages"] = used
        quantized = z + (codes - z).detach()  # one straight-through for the sum of all stages
        return QuantizerOutput(quantized, torch.cat(indices, dim=-1), torch.stack(losses).sum(), stats)


class ProductVQ(nn.Module):
    """G independent codebooks over G slices of the vector (wav2vec 2.0's product quantization, with VQ-EMA)."""

    def __init__(self, dim: int, codebook_size: int, num_groups: int, **vq_kwargs):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} is not divisible by num_groups {num_groups}")
        self.dim, self.codebook_size, self.num_codebooks = dim, codebook_size, num_groups
        self.groups = nn.ModuleList(
            VectorQuantizerEMA(dim // num_groups, codebook_size, **vq_kwargs) for _ in range(num_groups)
        )

    @classmethod
    def from_config(cls, config, dim: int) -> ProductVQ:
        return cls(dim, config.codebook_size, config.num_codebooks, **_vq_options(config))

    def _slices(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return z.chunk(self.num_codebooks, dim=-1)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([g.encode(s) for g, s in zip(self.groups, self._slices(z))], dim=-1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.decode(indices[..., i]) for i, g in enumerate(self.groups)], dim=-1)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        outs = [g(s, generator) for g, s in zip(self.groups, self._slices(z))]
        stats = {f"perplexity_{i}": o.stats["perplexity"] for i, o in enumerate(outs)}
        stats["perplexity"] = math.prod(o.stats["perplexity"] for o in outs) ** (1 / len(outs))
        stats["usage"] = sum(o.stats["usage"] for o in outs) / len(outs)
        return QuantizerOutput(
            torch.cat([o.quantized for o in outs], dim=-1),
            torch.cat([o.indices for o in outs], dim=-1),
            torch.stack([o.loss for o in outs]).sum(),
            stats,
        )


class GumbelVQ(nn.Module):
    """vq-wav2vec / wav2vec 2.0 Gumbel-softmax quantizer: G groups x V entries, hard one-hot choices in the
    forward pass with soft gradients, temperature annealed by the trainer, and the diversity loss
    (GV - perplexity of the batch-averaged softmax) / GV that keeps all entries in use."""

    def __init__(
        self, dim: int, codebook_size: int, num_groups: int, diversity_weight: float = 0.1, temperature: float = 2.0
    ):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} is not divisible by num_groups {num_groups}")
        self.dim, self.codebook_size, self.num_codebooks = dim, codebook_size, num_groups
        self.diversity_weight, self.temperature = diversity_weight, temperature
        self.logits = nn.Linear(dim, num_groups * codebook_size)
        self.entries = nn.Parameter(torch.randn(num_groups, codebook_size, dim // num_groups) * 0.1)

    @classmethod
    def from_config(cls, config, dim: int) -> GumbelVQ:
        return cls(
            dim, config.codebook_size, config.num_codebooks, config.diversity_weight, config.gumbel_temperature[0]
        )

    def _group_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(z).view(*z.shape[:-1], self.num_codebooks, self.codebook_size)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return self._group_logits(z).argmax(dim=-1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        parts = [F.embedding(indices[..., g], self.entries[g]) for g in range(self.num_codebooks)]
        return torch.cat(parts, dim=-1)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        logits = self._group_logits(z).float()  # (batch, frames, G, V)
        if self.training:
            uniform = torch.rand(
                logits.shape, generator=generator, device=generator.device if generator is not None else logits.device
            ).to(logits.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-9, 1 - 1e-9)))
            soft = F.softmax((logits + gumbel) / self.temperature, dim=-1)
            indices = soft.argmax(dim=-1)
            hard = F.one_hot(indices, self.codebook_size).to(soft.dtype)
            weights = hard + soft - soft.detach()  # straight-through Gumbel estimator
        else:
            indices = logits.argmax(dim=-1)
            weights = F.one_hot(indices, self.codebook_size).to(logits.dtype)
        quantized = torch.einsum("btgv,gvd->btgd", weights, self.entries.float()).flatten(-2).to(z.dtype)
        avg_probs = F.softmax(logits, dim=-1).reshape(-1, self.num_codebooks, self.codebook_size).mean(0)
        prob_perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-7)).sum(-1)).sum()
        total = self.num_codebooks * self.codebook_size
        diversity = (total - prob_perplexity) / total
        code_perplexity = sum(_perplexity(indices[..., g], self.codebook_size) for g in range(self.num_codebooks))
        usage = sum(indices[..., g].unique().numel() for g in range(self.num_codebooks)) / total
        stats = {
            "perplexity": code_perplexity,
            "prob_perplexity": prob_perplexity.item(),
            "usage": usage,
            "temperature": self.temperature,
        }
        return QuantizerOutput(quantized, indices, self.diversity_weight * diversity, stats)


def _vq_options(config) -> dict:
    return {
        "decay": config.ema_decay,
        "commitment": config.commitment,
        "dead_code_steps": config.dead_code_steps,
        "kmeans_init": config.kmeans_init,
    }


QUANTIZERS = Registry("train_encoder.quantizer.name")
QUANTIZERS.register("vq_ema", "speechvq.encoder.quantizers:VectorQuantizerEMA")
QUANTIZERS.register("residual", "speechvq.encoder.quantizers:ResidualVQ")
QUANTIZERS.register("product", "speechvq.encoder.quantizers:ProductVQ")
QUANTIZERS.register("gumbel", "speechvq.encoder.quantizers:GumbelVQ")


def build_quantizer(config, dim: int) -> nn.Module:
    """config: QuantizerConfig; the quantizer its name registers, built by that class's from_config."""
    return QUANTIZERS.get(config.name).from_config(config, dim)
