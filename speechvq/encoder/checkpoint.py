"""Model and optimizer state as safetensors + JSON: nothing is pickled, so a checkpoint can be opened safely."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from ..errors import CodebookFileError, ConfigError
from ..fileio import write_bytes, write_json
from ..run_folder import RunFolder

MODEL_FILE = RunFolder.ENCODER_MODEL
CHECKPOINT_FILE = RunFolder.ENCODER_CHECKPOINT
SNAPSHOTS_DIR = RunFolder.ENCODER_SNAPSHOTS


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Tensors into `path`, metadata into its header and into `path.json` (readable copy), both atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_bytes(path, save_safetensors_bytes(tensors, metadata={"speechvq": json.dumps(meta, sort_keys=True)}))
    write_json(path.with_suffix(".json"), meta)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["speechvq"])
            return {name: handle.get_tensor(name) for name in handle.keys()}, meta
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CodebookFileError(path, f"not a speechvq model file ({exc})") from None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{key}": value
        for index, entry in state["state"].items()
        for key, value in entry.items()
        if torch.is_tensor(value)
    }
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """A trained model from model.safetensors (or a run folder holding encoder/model.safetensors), built by its
    training objective from the config recorded beside the weights."""
    from ..config import EncoderModelConfig, ObjectiveConfig, QuantizerConfig, TrainEncoderConfig
    from . import OBJECTIVES

    path = Path(path)
    if path.is_dir():  # a run folder, or its encoder folder
        folder = RunFolder(path)
        path = folder.encoder_model if folder.encoder_dir.is_dir() else path / MODEL_FILE
    tensors, meta = load_tensors(path)
    settings = dict(meta["train_encoder"])
    config = TrainEncoderConfig(
        objective=ObjectiveConfig(**settings.pop("objective", {})),
        model=EncoderModelConfig(**settings.pop("model")),
        quantizer=QuantizerConfig(**settings.pop("quantizer")),
        **settings,
    )
    model = OBJECTIVES.get(config.objective.name).from_config(config, meta["sample_rate"], meta.get("num_units"))
    model.load_state_dict(tensors)
    if state_fingerprint(tensors) != meta["fingerprint"]:
        raise ConfigError("checkpoint", str(path), "weights do not match their recorded fingerprint")
    return model.to(device).eval(), meta
