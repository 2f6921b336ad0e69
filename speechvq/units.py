"""What turns frames into units, behind one interface: a k-means Codebook, or the quantizer of the trained
encoder (one or several codebooks). quantize and evaluate only talk to this. The kinds are registered in
UNIT_KINDS under the names `codebook.name` takes."""

from __future__ import annotations

from pathlib import Path

import torch

from .codebook import Codebook, load_codebook
from .config import CodebookConfig, QuantizeConfig
from .errors import CodebookMismatchError, ConfigError
from .quantize import nearest_codewords
from .registry import Registry
from .run_folder import RunFolder


class KMeansUnits:
    trains_codebook = True  # the train stage runs k-means for it
    required_features = None  # any feature family

    @classmethod
    def load(cls, codebook: CodebookConfig, quantize: QuantizeConfig, folder: RunFolder) -> KMeansUnits:
        """codebook.path, or the run's own codebook."""
        path = Path(codebook.path) if codebook.path else folder.require(folder.codebook, "quantize")
        return cls(load_codebook(path), quantize.chunk_size, quantize.precision)

    def __init__(self, codebook: Codebook, chunk_size: int | None = None, precision: str = "exact"):
        self.codebook, self.chunk_size, self.precision = codebook, chunk_size, precision
        self.fingerprint = codebook.fingerprint
        self.codebook_size = codebook.codebook_size
        self.num_codebooks = codebook.num_streams  # several for multi-layer tokens
        self.feature_config = codebook.feature_config
        self.kind = "kmeans"

    def check_compatible(self, feature_config: dict, dim: int) -> None:
        self.codebook.check_compatible(feature_config, dim)

    def assign(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw feature frames (num_frames, dim) -> (num_frames, num_codebooks) int64: each stream's slice of the
        frames against that stream's codewords (one stream unless multi-layer tokens)."""
        normalized, centroids = self.codebook.normalize(frames), self.codebook.centroids.to(frames.device)
        streams = [
            nearest_codewords(
                normalized[:, part].contiguous(), centroids[:, part].contiguous(), self.chunk_size, self.precision
            )[0]
            for part in self.codebook.stream_slices()
        ]
        return torch.stack(streams, dim=1)

    def lookup(self, units: torch.Tensor) -> torch.Tensor:
        """(num_frames, num_codebooks) -> codewords (num_frames, dim) in the normalized (assignment) space."""
        parts = self.codebook.stream_slices()
        return torch.cat([self.codebook.centroids[units[:, s].cpu(), part] for s, part in enumerate(parts)], dim=1)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return self.codebook.normalize(frames)

    def denormalize(self, frames: torch.Tensor) -> torch.Tensor:
        if self.codebook.feature_mean is None:
            return frames
        return frames * self.codebook.feature_std + self.codebook.feature_mean


class EncoderUnits:
    """The train_encoder model's own quantizer, applied to its encoder's frames (features=encoder)."""

    trains_codebook = False  # its codebooks were trained with the encoder
    required_features = "encoder"

    @classmethod
    def load(cls, codebook: CodebookConfig, quantize: QuantizeConfig, folder: RunFolder) -> EncoderUnits:
        """The model of codebook.path (a run folder or model file), or the run's own."""
        from .encoder.checkpoint import load_encoder

        path = Path(codebook.path) if codebook.path else folder.require(folder.encoder_dir, "quantize")
        model, meta = load_encoder(path)
        if not hasattr(model, "quantizer"):
            raise ConfigError(
                "codebook.name",
                "encoder",
                f"the {meta['train_encoder']['objective']['name']} model in {path} has no "
                "quantizer of its own; use codebook=kmeans on its features",
            )
        return cls(model, meta)

    def __init__(self, model, meta: dict):
        self.model, self.meta = model, meta
        self.quantizer = model.quantizer
        self.fingerprint = meta["fingerprint"]
        self.codebook_size = self.quantizer.codebook_size
        self.num_codebooks = self.quantizer.num_codebooks
        self.kind = meta["train_encoder"]["quantizer"]["name"]
        self.feature_config = None  # any encoder features of this very model

    def check_compatible(self, feature_config: dict, dim: int) -> None:
        if feature_config.get("name") != "encoder":
            raise CodebookMismatchError("feature config", {"name": "encoder"}, {"name": feature_config.get("name")})
        if feature_config.get("model_fingerprint") != self.fingerprint:
            raise CodebookMismatchError("encoder model", self.fingerprint, feature_config.get("model_fingerprint"))
        layer = getattr(self.model, "quantizer_layer", None)  # where the quantizer reads, for Transformer models
        if layer is not None and feature_config.get("layer") != layer:
            raise ConfigError(
                "features.layer", feature_config.get("layer"), f"this model's quantizer reads layer {layer}"
            )

    @torch.inference_mode()
    def assign(self, frames: torch.Tensor) -> torch.Tensor:
        self.model.to(frames.device)
        return self.quantizer.encode(frames.unsqueeze(0))[0].reshape(frames.shape[0], -1).cpu()

    @torch.inference_mode()
    def lookup(self, units: torch.Tensor) -> torch.Tensor:
        self.model.cpu()
        indices = units.unsqueeze(0) if self.num_codebooks > 1 else units[:, 0].unsqueeze(0)
        return self.quantizer.decode(indices.cpu())[0]

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return frames

    def denormalize(self, frames: torch.Tensor) -> torch.Tensor:
        return frames


UNIT_KINDS = Registry("codebook.name")
UNIT_KINDS.register("kmeans", "speechvq.units:KMeansUnits")
UNIT_KINDS.register("encoder", "speechvq.units:EncoderUnits")


def load_unit_model(codebook: CodebookConfig, quantize: QuantizeConfig, folder: RunFolder):
    """The unit model `codebook.name` names, loaded for quantize / evaluate."""
    return UNIT_KINDS.get(codebook.name).load(codebook, quantize, folder)
