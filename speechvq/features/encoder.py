"""Pre-quantization frames of a trained conv encoder (train_encoder stage) as features for k-means or
for the model's own quantizer."""

from __future__ import annotations

import torch

from ..config import FeatureConfig
from ..errors import ConfigError
from .base import batched_or_chunked, chunk_sizes, normalized_as_configured


class EncoderExtractor:
    needs_weights = True
    checkpoint_defaults_to_run = True
    takes_layer_lists = True  # concatenated

    def __init__(self, config: FeatureConfig):
        from ..encoder.checkpoint import load_encoder
        from ..encoder.transformer import TransformerEncoder

        if not config.checkpoint:
            raise ConfigError(
                "features.checkpoint",
                None,
                "features=encoder needs a trained model: a run "
                "folder with encoder/model.safetensors, or the file itself",
            )
        self.config = config
        self.model, self.meta = load_encoder(config.checkpoint)
        if self.meta["sample_rate"] != config.sample_rate:
            raise ConfigError(
                "features.sample_rate", config.sample_rate, f"the encoder was trained at {self.meta['sample_rate']} Hz"
            )
        self.layers = [config.layer] if isinstance(config.layer, int) else [int(layer) for layer in config.layer]
        for layer in self.layers:
            self.model.check_layer(layer)
        if len(self.layers) > 1 and not isinstance(self.model, TransformerEncoder):
            raise ConfigError("features.layer", self.layers, "the conv VQ-VAE has one output: name one layer")
        if len(self.layers) > 1 and config.layer_reduction != "concat":
            raise ConfigError("features.layer_reduction", config.layer_reduction, "features=encoder concatenates")
        self.dim = self.model.feature_dim * len(self.layers)
        self.frame_rate_hz = self.model.frame_rate_hz
        self.hop = round(config.sample_rate / self.frame_rate_hz)  # samples per frame

    def describe(self) -> dict:
        return {**self.config.to_dict(), "model_fingerprint": self.meta["fingerprint"]}

    def num_frames(self, num_samples: int) -> int:
        return self.model.num_frames(num_samples)

    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Layer features.layer of the model (the conv output for the VQ-VAE), equal alone or in a batch; files
        longer than features.chunk_s in overlapping chunks (a Transformer's attention grows with the square of
        the length)."""
        if waveforms and next(self.model.parameters()).device != waveforms[0].device:
            self.model.to(waveforms[0].device)
        sizes = chunk_sizes(self.config, self.hop)
        frames = batched_or_chunked(waveforms, self._forward, self.num_frames, self.hop, self.dim, sizes)
        return normalized_as_configured(frames, self.config.normalize)

    def _forward(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.model.layer_features(waveforms, self.layers)

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return self.extract_batch([samples])[0]
