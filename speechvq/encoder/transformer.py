"""The Transformer encoder the prediction objectives share (masked_prediction, contrastive): a front end to
50 Hz frames, a learned mask embedding, a convolutional position embedding and a pre-norm Transformer.

Front ends (train_encoder.objective.front_end): `logmel`, Kaldi 80-bin log-mel at 100 Hz and a stride-2
convolution (as BEST-RQ and w2v-BERT use); `waveform`, wav2vec 2.0's conv feature encoder on the samples
(7 layers, strides 5*2^6 = 320). Both give one frame per 320 samples at 16 kHz, then a layer norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..features import kaldi_batched
from .model import ConvEncoder

LOGMEL_BINS = 80
WINDOW, HOP = 400, 160  # 25 / 10 ms at 16 kHz
SUBSAMPLE = 2  # 100 Hz log-mel -> 50 Hz frames
FRAME_HOP = HOP * SUBSAMPLE  # samples per 50 Hz frame
CONV_KERNELS, CONV_STRIDES = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]


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


class TransformerEncoder(nn.Module):
    """Front end + Transformer; subclasses add their objective's heads."""

    frame_rate_hz = 50.0
    data_parallel = True  # train.py deals each step's batch over the torchrun ranks

    @classmethod
    def check_config(cls, config) -> None:
        """config: TrainEncoderConfig; what only this objective needs of it (subclasses add theirs)."""

    def __init__(self, dim: int, layers: int, heads: int, sample_rate: int = 16000, front_end: str = "logmel"):
        super().__init__()
        if sample_rate != 16000:
            raise ValueError("the front ends are set up for 16 kHz audio")
        if front_end not in ("logmel", "waveform"):
            raise ConfigError("train_encoder.objective.front_end", front_end, "logmel | waveform")
        self.sample_rate, self.front_end_name = sample_rate, front_end
        if front_end == "logmel":
            self.subsample = nn.Conv1d(LOGMEL_BINS, dim, SUBSAMPLE, stride=SUBSAMPLE)
        else:
            self.conv = ConvEncoder(dim, CONV_KERNELS, CONV_STRIDES, dim)
        self.front_norm = nn.LayerNorm(dim)
        self.mask_embedding = nn.Parameter(torch.randn(dim) * 0.1)
        self.position = ConvPositionEmbedding(dim)
        # No dropout: its draws would come from the global generator, and a resumed run would differ.
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)

    def num_frames(self, num_samples: int) -> int:
        if self.front_end_name == "waveform":
            return self.conv.num_frames(num_samples)
        logmel = 0 if num_samples < WINDOW else 1 + (num_samples - WINDOW) // HOP
        return logmel // SUBSAMPLE

    def _frames(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """(frames, dim) front-end output for one waveform already on the model's device."""
        if self.front_end_name == "waveform":
            return self.conv(wave.unsqueeze(0))[0]
        windows = wave.unfold(0, WINDOW, HOP)[: frames * SUBSAMPLE]
        logmel = kaldi_batched.log_mel(windows, self.sample_rate, LOGMEL_BINS)  # (2 frames, 80)
        return self.subsample(logmel.T.unsqueeze(0))[0].T

    def front_end(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms of any lengths -> (batch, frames, dim) layer-normed 50 Hz frames, zero-padded, and the valid
        mask."""
        raw, valid = self.front_end_frames(waveforms)
        return self.normalized(raw, valid), valid

    def normalized(self, raw: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The layer norm of front_end_frames' output, padded frames kept at zero."""
        return torch.where(valid.unsqueeze(-1), self.front_norm(raw), 0.0)

    def front_end_frames(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The front end's frames before the layer norm (zero-padded) and the valid mask. Each waveform goes
        through alone, so its frames do not depend on what it is batched with."""
        device = self.front_norm.weight.device
        outs = []
        for wave in waveforms:
            frames = self.num_frames(wave.numel())
            if frames == 0:
                outs.append(torch.zeros(0, self.feature_dim, device=device))
                continue
            outs.append(self._frames(wave.to(device), frames))
        lengths = torch.tensor([o.shape[0] for o in outs], device=device)
        padded = nn.utils.rnn.pad_sequence(outs, batch_first=True)
        valid = torch.arange(padded.shape[1], device=device).unsqueeze(0) < lengths.unsqueeze(1)
        return padded, valid

    def context(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The context network's output: all layers, then the final norm."""
        return self.final_norm(self.hidden_states(x, valid, len(self.layers.layers))[-1])

    def hidden_states(self, x: torch.Tensor, valid: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        """[the front end's frames x, layer 1's output, ..., layer num_layers' output] (no final norm)."""
        states = [x]
        if num_layers:
            h = self.position(x, valid)
            for layer in self.layers.layers[:num_layers]:
                h = layer(h, src_key_padding_mask=~valid)
                states.append(h)
        return states

    def masked_input(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)

    @property
    def feature_dim(self) -> int:
        return self.front_norm.normalized_shape[0]

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer <= len(self.layers.layers):
            raise ConfigError("features.layer", layer, f"0 (front end) .. {len(self.layers.layers)} for this model")

    @torch.inference_mode()
    def layer_features(self, waveforms: list[torch.Tensor], layer: int | list[int]) -> list[torch.Tensor]:
        """Layer `layer` (1-based; 0 = the front end) of unmasked audio, one (frames, dim) tensor per waveform; a
        list of layers gives their outputs side by side (frames, dim * len(layer)), from one forward pass."""
        wanted = [layer] if isinstance(layer, int) else list(layer)
        x, valid = self.front_end(waveforms)
        states = self.hidden_states(x, valid, max(wanted))
        out = torch.cat([states[i] for i in wanted], dim=-1)
        return [out[i, : int(n)].float() for i, n in enumerate(valid.sum(1))]
