"""Layer features of a pretrained HuBERT / wav2vec 2.0 / WavLM model (any checkpoint ssl_checkpoint reads).

Layer L follows transformers' (5.x) `hidden_states[L]`: 0 is the Transformer's input (after the positional
convolution, and its layer norm in post-norm models), L is the output of Transformer layer L as it is, also for
the last layer of a pre-norm ("stable layer norm", large) model: the encoder's final layer norm, which only
`last_hidden_state` carries, is not applied (as in fairseq's layer results and torchaudio's extract_features).

Batched inference pads the Transformer input and masks it; the conv front end runs on each file unpadded,
because the base models' GroupNorm normalizes over time and would otherwise see the padding. Together this
makes a file's features the same whether it runs alone or in a batch. Files are batched in length order."""

from __future__ import annotations

import math

import torch

from ..config import FeatureConfig
from ..errors import ConfigError
from .base import batched_or_chunked, chunk_sizes, normalized_as_configured
from .ssl_checkpoint import SSL_MODELS, read_checkpoint

__all__ = ["SSL_MODELS", "SSLExtractor"]


class SSLExtractor:
    needs_weights = True
    checkpoint_defaults_to_run = False
    takes_layer_lists = True  # combined by features.layer_reduction

    def __init__(self, config: FeatureConfig):
        if not config.checkpoint:
            raise ConfigError("features.checkpoint", None, "features=ssl needs local weights (features.checkpoint)")
        self.config = config
        checkpoint = read_checkpoint(config.checkpoint, config.ssl_model)
        self.model, self.normalize_waveform = checkpoint.model, checkpoint.normalize_waveform
        self._fingerprint, self.family = checkpoint.fingerprint, checkpoint.family
        transformer = self.model.encoder.transformer
        num_layers = len(transformer.layers)
        self.layers = [config.layer] if isinstance(config.layer, int) else [int(layer) for layer in config.layer]
        if not self.layers or not all(0 <= layer <= num_layers for layer in self.layers):
            reason = f"this {checkpoint.family} model has layers 0..{num_layers}"
            raise ConfigError("features.layer", config.layer, reason)
        if config.layer_reduction not in ("concat", "mean", "tokens"):
            raise ConfigError("features.layer_reduction", config.layer_reduction, "must be concat, mean or tokens")
        width = transformer.layers[0].attention.embed_dim if num_layers else transformer.pos_conv_embed.embed_dim
        # tokens: the layers side by side, as concat; the codebook then clusters each layer on its own
        self.dim = width * (1 if config.layer_reduction == "mean" else len(self.layers))
        convs = self.model.feature_extractor.conv_layers
        self._convs = [(layer.conv.kernel_size[0], layer.conv.stride[0]) for layer in convs]
        self.hop = math.prod(stride for _, stride in self._convs)
        self.frame_rate_hz = config.sample_rate / self.hop

    def describe(self) -> dict:
        return {**self.config.to_dict(), "model_fingerprint": self._fingerprint}

    def num_frames(self, num_samples: int) -> int:
        for kernel, stride in self._convs:
            num_samples = (num_samples - kernel) // stride + 1 if num_samples >= kernel else 0
        return num_samples

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Different-length (num_samples,) waveforms -> [(num_frames_i, dim)]: the short ones in padded, masked
        forward passes of similar lengths, each long one in overlapping chunks, too-short ones as (0, dim)."""
        waveforms = [self._prepare(wave) for wave in waveforms]
        sizes = chunk_sizes(self.config, self.hop)
        frames = batched_or_chunked(waveforms, self._forward, self.num_frames, self.hop, self.dim, sizes)
        return normalized_as_configured(frames, self.config.normalize)

    def _prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """On the model's device; zero mean and unit variance over the whole file where the model expects it
        (as transformers' feature extractor does it), before any chunking."""
        wave = wave.to(self._device(), torch.float32)
        if self.normalize_waveform and wave.numel():
            wave = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
        return wave

    def _forward(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        device = self._device()
        bf16 = self.config.dtype == "bfloat16"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fronts = [self.model.feature_extractor(w.view(1, -1), None)[0][0] for w in waveforms]
            lengths = torch.tensor([f.shape[0] for f in fronts], device=device)
            padded = torch.nn.utils.rnn.pad_sequence(fronts, batch_first=True)
            hidden = self._hidden_states(padded, lengths)
        stacked = torch.stack([hidden[layer].float() for layer in self.layers])  # (num_layers, batch, time, width)
        if self.config.layer_reduction == "mean":
            frames = stacked.mean(dim=0)
        else:
            frames = torch.cat(list(stacked), dim=-1)
        return [frames[i, : int(n)] for i, n in enumerate(lengths)]

    def _hidden_states(self, padded: torch.Tensor, lengths: torch.Tensor) -> dict[int, torch.Tensor]:
        """The wanted layers' outputs (transformers' hidden_states numbering); the encoder zeroes padded frames
        and masks them out of attention."""
        x, mask = self.model.encoder._preprocess(padded, lengths)
        padding = None
        if self.family == "wavlm":  # its attention takes the padding as a key mask, not as an additive mask
            padded_keys = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
            mask, padding = None, torch.zeros_like(padded_keys, dtype=x.dtype).masked_fill(padded_keys, -torch.inf)
        transformer = self.model.encoder.transformer
        x = transformer._preprocess(x)
        hidden, position_bias, top = {0: x}, None, max(self.layers)
        for number, layer in enumerate(transformer.layers[:top], start=1):
            x, position_bias = layer(x, mask, position_bias=position_bias, key_padding_mask=padding)
            hidden[number] = x
        return hidden

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        if self._device() != samples.device:
            self.model.to(samples.device)
        return self.extract_batch([samples])[0]
