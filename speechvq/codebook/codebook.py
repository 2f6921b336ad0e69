"""The trained codebook as a value object, saved as safetensors with its metadata inside the
file header (and a readable JSON copy beside it). Loading never unpickles anything."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from ..errors import CodebookFileError, CodebookMismatchError
from ..fileio import write_bytes, write_json
from ..run_folder import RunFolder

FORMAT_VERSION = 1
CODEBOOK_FILE = RunFolder.CODEBOOK


def num_streams(feature_config: dict) -> int:
    """Multi-layer tokens (features.layer_reduction=tokens): the frames are the layers side by side, each layer
    has its own k-means, and row k of the centroids is codeword k of every layer, side by side. Else one."""
    if feature_config.get("layer_reduction") != "tokens":
        return 1
    return len(feature_config["layer"])


def stream_slices(dim: int, count: int) -> list[slice]:
    width = dim // count
    return [slice(s * width, (s + 1) * width) for s in range(count)]


@dataclass(frozen=True)
class Codebook:
    centroids: torch.Tensor  # (codebook_size, dim) float32
    feature_config: dict  # FeatureConfig.to_dict() of the features it was trained on
    frame_rate_hz: float
    feature_mean: torch.Tensor | None = None  # (dim,) global normalization, applied before assignment
    feature_std: torch.Tensor | None = None  # (dim,)
    training: dict = field(default_factory=dict)  # summary: frames, inertia, iterations, seed, ...

    @property
    def codebook_size(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @property
    def num_streams(self) -> int:
        return num_streams(self.feature_config)

    def stream_slices(self) -> list[slice]:
        return stream_slices(self.dim, self.num_streams)

    @property
    def fingerprint(self) -> str:
        """Content hash of everything that decides the units: centroids, normalization, feature config."""
        digest = hashlib.sha256()
        for tensor in (self.centroids, self.feature_mean, self.feature_std):
            if tensor is not None:
                digest.update(tensor.detach().cpu().contiguous().to(torch.float32).numpy().tobytes())
        described = {k: v for k, v in self.feature_config.items() if k != "checkpoint"}
        digest.update(json.dumps(described, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """Apply the stored global normalization (identity when there is none)."""
        if self.feature_mean is None:
            return frames
        mean = self.feature_mean.to(frames.device)
        std = self.feature_std.to(frames.device)
        return (frames - mean) / std

    def check_compatible(self, feature_config: dict, dim: int) -> None:
        if dim != self.dim:
            raise CodebookMismatchError("feature dimension", self.dim, dim)
        # "checkpoint" is where weights were found, not what they are (model_fingerprint says that).
        ours = {k: v for k, v in self.feature_config.items() if k != "checkpoint"}
        feature_config = {k: v for k, v in feature_config.items() if k != "checkpoint"}
        if feature_config != ours:
            differing = {
                key: (ours.get(key), feature_config.get(key))
                for key in sorted(set(feature_config) | set(ours))
                if feature_config.get(key) != ours.get(key)
            }
            raise CodebookMismatchError(
                "feature config", {k: v[0] for k, v in differing.items()}, {k: v[1] for k, v in differing.items()}
            )

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "codebook_size": self.codebook_size,
            "dim": self.dim,
            "frame_rate_hz": self.frame_rate_hz,
            "sample_rate": self.feature_config.get("sample_rate"),
            "feature_config": self.feature_config,
            "global_normalization": self.feature_mean is not None,
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write `<path>` (safetensors) and `<path minus suffix>.json` atomically."""
        path = Path(path)
        tensors = {"centroids": self.centroids.detach().cpu().contiguous().float()}
        if self.feature_mean is not None:
            tensors["feature_mean"] = self.feature_mean.detach().cpu().contiguous().float()
            tensors["feature_std"] = self.feature_std.detach().cpu().contiguous().float()
        meta = self.metadata()
        write_bytes(path, save_safetensors_bytes(tensors, metadata={"speechvq": json.dumps(meta, sort_keys=True)}))
        write_json(path.with_suffix(".json"), meta)
        return path


def resolve_codebook_path(path: str | Path) -> Path:
    """Accept a codebook file or a run folder that holds one."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CODEBOOK_FILE
    if not path.exists():
        raise CodebookFileError(path, "file does not exist")
    return path


def load_codebook(path: str | Path) -> Codebook:
    path = resolve_codebook_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, ValueError, OSError) as exc:
        raise CodebookFileError(path, f"not a valid safetensors codebook ({exc})") from None
    if "speechvq" not in header or "centroids" not in tensors:
        raise CodebookFileError(path, "missing speechvq metadata or centroids")
    try:
        meta = json.loads(header["speechvq"])
    except json.JSONDecodeError as exc:
        raise CodebookFileError(path, f"metadata is not valid JSON ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CodebookFileError(path, f"unsupported format_version {meta.get('format_version')!r}")
    codebook = Codebook(
        centroids=tensors["centroids"],
        feature_config=meta["feature_config"],
        frame_rate_hz=float(meta["frame_rate_hz"]),
        feature_mean=tensors.get("feature_mean"),
        feature_std=tensors.get("feature_std"),
        training=meta.get("training", {}),
    )
    if codebook.fingerprint != meta.get("fingerprint"):
        raise CodebookFileError(path, "content does not match its recorded fingerprint (file altered or corrupt)")
    return codebook
