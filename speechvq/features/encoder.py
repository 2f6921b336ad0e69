"""Pre-quantization frames of a trained conv encoder (train_encoder stage) as features for k-means or
for the model's own quantizer."""

from __future__ import annotations

import torch

from ..config import FeatureConfig
from ..errors import ConfigError


class EncoderExtractor:
    needs_weights = True
    checkpoint_defaults_to_run = True

    def __init__(self, config: FeatureConfig):
        from ..encoder.checkpoint import load_encoder

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
        self.dim = self.model.encoder.project.out_channels
        self.frame_rate_hz = self.model.frame_rate_hz

    def describe(self) -> dict:
        return {**self.config.to_dict(), "model_fingerprint": self.meta["fingerprint"]}

    def num_frames(self, num_samples: int) -> int:
        return self.model.encoder.num_frames(num_samples)

    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self(w) for w in waveforms]

    @torch.inference_mode()
    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        if self.num_frames(samples.numel()) == 0:
            return samples.new_zeros((0, self.dim))
        if next(self.model.parameters()).device != samples.device:
            self.model.to(samples.device)
        return self.model.encoder(samples.view(1, -1))[0].float()
