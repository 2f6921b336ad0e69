"""Layer-N features of a pretrained HuBERT / wav2vec 2.0 model through torchaudio.models, from local weights.

Batched inference pads the transformer input and masks it; the conv front end runs on each file unpadded,
because the base models' GroupNorm normalizes over time and would otherwise see the padding. Together this
makes a file's features the same whether it runs alone or in a batch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import FeatureConfig
from ..errors import ConfigError
from ..registry import Registry

SSL_MODELS = Registry("features.ssl_model")  # architectures built by torchaudio.models
for _name in ("hubert_base", "hubert_large", "wav2vec2_base", "wav2vec2_large"):
    SSL_MODELS.register(_name, f"torchaudio.models:{_name}")
CONTEXT_S = 1.0


def load_ssl_model(name: str, checkpoint: str | Path) -> torch.nn.Module:
    """A torchaudio model with weights from a .safetensors state dict, or a torchaudio state dict saved with
    torch.save (read with weights_only=True, which refuses arbitrary pickled objects)."""
    path = Path(checkpoint)
    if not path.exists():
        raise ConfigError("features.checkpoint", str(path), "file does not exist (nothing is downloaded)")
    state = (
        load_file(str(path))
        if path.suffix == ".safetensors"
        else torch.load(path, weights_only=True, map_location="cpu")
    )
    model = SSL_MODELS.get(name)()
    model.load_state_dict(state)
    return model.eval()


class SSLExtractor:
    needs_weights = True
    checkpoint_defaults_to_run = False

    def __init__(self, config: FeatureConfig):
        if not config.checkpoint:
            raise ConfigError("features.checkpoint", None, "features=ssl needs local weights (features.checkpoint)")
        self.config = config
        self.model = load_ssl_model(config.ssl_model, config.checkpoint)
        num_layers = len(self.model.encoder.transformer.layers)
        if not 1 <= config.layer <= num_layers:
            raise ConfigError("features.layer", config.layer, f"{config.ssl_model} has layers 1..{num_layers}")
        self.dim = self.model.encoder.transformer.layers[0].attention.embed_dim
        self.hop = 320
        self.frame_rate_hz = config.sample_rate / self.hop
        self._fingerprint = hashlib.sha256(Path(config.checkpoint).read_bytes()).hexdigest()[:16]

    def describe(self) -> dict:
        return {**self.config.to_dict(), "model_fingerprint": self._fingerprint}

    def num_frames(self, num_samples: int) -> int:
        for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
            num_samples = (num_samples - kernel) // stride + 1 if num_samples >= kernel else 0
        return num_samples

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def extract_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Different-length (num_samples,) waveforms -> [(num_frames_i, dim)]: the short ones in one padded,
        masked forward pass, each long one in overlapping chunks, too-short ones as (0, dim)."""
        chunk = round(self.config.chunk_s * self.config.sample_rate) // self.hop * self.hop
        out: list[torch.Tensor | None] = [None] * len(waveforms)
        short = [i for i, w in enumerate(waveforms) if 0 < self.num_frames(w.numel()) and w.numel() <= chunk]
        for i, frames in zip(short, self._forward([waveforms[i] for i in short]) if short else []):
            out[i] = frames
        for i, wave in enumerate(waveforms):
            if out[i] is None:
                empty = self.num_frames(wave.numel()) == 0
                out[i] = wave.new_zeros((0, self.dim)) if empty else self._chunked(wave.to(self._device()), chunk)
        return out

    def _forward(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        device = self._device()
        fronts = [self.model.feature_extractor(w.to(device).view(1, -1), None)[0][0] for w in waveforms]
        lengths = torch.tensor([f.shape[0] for f in fronts], device=device)
        padded = torch.nn.utils.rnn.pad_sequence(fronts, batch_first=True)
        # The encoder zeroes padded frames and masks them out of attention.
        layers = self.model.encoder.extract_features(padded, lengths, num_layers=self.config.layer)
        return [layers[-1][i, : int(n)].float() for i, n in enumerate(lengths)]

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        if self._device() != samples.device:
            self.model.to(samples.device)
        return self.extract_batch([samples])[0]

    def _chunked(self, samples: torch.Tensor, chunk: int) -> torch.Tensor:
        """Overlapping windows with CONTEXT_S of context each side; frame i of a window starting at sample s
        (a multiple of the hop) is global frame s / hop + i, so the core frames stitch exactly."""
        context = round(CONTEXT_S * self.config.sample_rate) // self.hop * self.hop
        total = self.num_frames(samples.numel())
        out = samples.new_empty((total, self.dim))
        for core_start in range(0, samples.numel(), chunk):
            start = max(0, core_start - context)
            window = samples[start : core_start + chunk + context]
            frames = self._forward([window])[0]
            first = core_start // self.hop
            last = min(total, (core_start + chunk) // self.hop)
            if first >= last:
                break
            out[first:last] = frames[first - start // self.hop : last - start // self.hop]
        return out
