"""Model and optimizer state as safetensors + JSON: nothing is pickled, so a checkpoint can be opened safely."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from ..errors import CodebookFileError
from ..io import write_bytes, write_json

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


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
