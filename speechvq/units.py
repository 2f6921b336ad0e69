"""What turns frames into units, behind one interface: a k-means Codebook, or the quantizer of a trained
VQ-VAE (one or several codebooks). quantize and evaluate only talk to this."""

from __future__ import annotations

from pathlib import Path

import torch

from .codebook import Codebook, load_codebook
from .errors import CodebookMismatchError
from .quantize import nearest_codewords


class KMeansUnits:
    num_codebooks = 1

    def __init__(self, codebook: Codebook, chunk_size: int | None = None, precision: str = "exact"):
        self.codebook, self.chunk_size, self.precision = codebook, chunk_size, precision
        self.fingerprint = codebook.fingerprint
        self.codebook_size = codebook.codebook_size
        self.feature_config = codebook.feature_config
        self.kind = "kmeans"

    def check_compatible(self, feature_config: dict, dim: int) -> None:
        self.codebook.check_compatible(feature_config, dim)

    def assign(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw feature frames (num_frames, dim) -> (num_frames, 1) int64."""
        units, _ = nearest_codewords(
            self.codebook.normalize(frames),
            self.codebook.centroids.to(frames.device),
            self.chunk_size,
            self.precision,
        )
        return units.unsqueeze(1)

    def lookup(self, units: torch.Tensor) -> torch.Tensor:
        """(num_frames, 1) -> centroids (num_frames, dim) in the normalized (assignment) space."""
        return self.codebook.centroids[units[:, 0].cpu()]

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return self.codebook.normalize(frames)

    def denormalize(self, frames: torch.Tensor) -> torch.Tensor:
        if self.codebook.feature_mean is None:
            return frames
        return frames * self.codebook.feature_std + self.codebook.feature_mean


class LearnedUnits:
    """The train_encoder model's own quantizer, applied to its encoder's frames (features=conv_encoder)."""

    def __init__(self, model, meta: dict):
        self.model, self.meta = model, meta
        self.quantizer = model.quantizer
        self.fingerprint = meta["fingerprint"]
        self.codebook_size = self.quantizer.codebook_size
        self.num_codebooks = self.quantizer.num_codebooks
        self.kind = meta["train_encoder"]["quantizer"]["name"]
        self.feature_config = None  # any conv_encoder features of this very model

    def check_compatible(self, feature_config: dict, dim: int) -> None:
        if feature_config.get("name") != "conv_encoder":
            raise CodebookMismatchError(
                "feature config", {"name": "conv_encoder"}, {"name": feature_config.get("name")}
            )
        if feature_config.get("model_fingerprint") != self.fingerprint:
            raise CodebookMismatchError("encoder model", self.fingerprint, feature_config.get("model_fingerprint"))

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


def load_unit_model(
    name: str, path: str | Path | None, run_dir: Path, chunk_size: int | None = None, precision: str = "exact"
):
    """codebook.name=kmeans: a Codebook (codebook.path or the run's own); learned: the run's (or path's) VQ-VAE."""
    if name == "learned":
        from .learned.train import load_vqvae

        model, meta = load_vqvae(path or run_dir)
        return LearnedUnits(model, meta)
    from .codebook.codebook import CODEBOOK_FILE

    return KMeansUnits(load_codebook(path or run_dir / CODEBOOK_FILE), chunk_size, precision)
