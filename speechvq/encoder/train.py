"""The training loop every objective shares. Each step's batch (which utterances, which crops, the masks, the
Gumbel noise, the dead-code picks) comes from a generator seeded by (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have. The objective's model (OBJECTIVES) builds its
own batch from the picked waveforms and returns its loss."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import TrainEncoderConfig
from ..errors import ConfigError
from . import OBJECTIVES
from .checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    SNAPSHOTS_DIR,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_tensors,
    state_fingerprint,
)

log = logging.getLogger(__name__)


def split_validation(num_utterances: int, fraction: float) -> tuple[list[int], list[int]]:
    """Every k-th utterance is held out (deterministic, spread over the dataset)."""
    count = min(num_utterances - 1, max(1, round(num_utterances * fraction))) if fraction > 0 else 0
    held = set(round(i * num_utterances / count) for i in range(count)) if count else set()
    return [i for i in range(num_utterances) if i not in held], sorted(held)


def config_record(config: TrainEncoderConfig, sample_rate: int) -> dict:
    return {"train_encoder": dataclasses.asdict(config), "sample_rate": sample_rate}


def train_encoder_model(
    config: TrainEncoderConfig,
    waves: list[torch.Tensor],
    out_dir: Path,
    device: torch.device,
    seed: int,
    sample_rate: int = 16000,
    labels: list[torch.Tensor] | None = None,
    num_units: int | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train on `waves` (mono float32 at sample_rate; with `labels`, one target unit per model frame of each, out
    of num_units); checkpoints, the final model and history go to out_dir."""
    for key in ("steps", "batch_size"):
        if getattr(config, key) < 1:  # zero steps would save an untrained model as if trained
            raise ConfigError(f"train_encoder.{key}", getattr(config, key), "must be at least 1")
    if len(waves) < 2:
        raise ConfigError("train_encoder", f"{len(waves)} utterances", "training needs at least 2 utterances")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # parameter initialisation only; every later draw uses explicit generators
    model = OBJECTIVES.get(config.objective.name).from_config(config, sample_rate, num_units).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    record = {**config_record(config, sample_rate), "num_units": num_units}
    checkpoint = out_dir / CHECKPOINT_FILE
    history, first_step = _resume(checkpoint, model, optimizer, record)
    # training time so far (carried over a resume), for curves of quality against training minutes
    started = time.perf_counter() - (history[-1].get("elapsed_s", 0.0) if history else 0.0)
    train_ids, val_ids = split_validation(len(waves), config.validation_fraction)
    segment = round(config.segment_s * sample_rate)
    bar = tqdm(
        range(first_step, config.steps), initial=first_step, total=config.steps, desc="train_encoder", disable=None
    )
    model.train()
    for step in bar:
        entry = _train_step(model, optimizer, config, waves, labels, train_ids, segment, step, seed, device)
        entry["elapsed_s"] = round(time.perf_counter() - started, 3)
        if val_ids and ((step + 1) % config.validate_every == 0 or step + 1 == config.steps):
            entry["val_loss"] = validate(model, waves, labels, val_ids, segment, config, device)
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            _save_checkpoint(checkpoint, model, optimizer, step + 1, history, record)
            if config.keep_snapshots:
                snapshot = out_dir / SNAPSHOTS_DIR / f"step{step + 1:07d}.safetensors"
                save_model(snapshot, model, record, step + 1, history)
    bar.close()
    model.eval()
    save_model(out_dir / MODEL_FILE, model, record, config.steps, history)
    _save_checkpoint(checkpoint, model, optimizer, config.steps, history, record)
    return model, history


def save_model(path: Path, model: torch.nn.Module, record: dict, steps: int, history: list[dict]) -> None:
    """The weights and what load_encoder needs to rebuild the model, after `steps` training steps."""
    state = dict(model.state_dict())
    meta = {
        **record,
        "frame_rate_hz": model.frame_rate_hz,
        "fingerprint": state_fingerprint(state),
        "steps": steps,
        "final": history[-1] if history else {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, state, meta)


def _resume(checkpoint: Path, model: torch.nn.Module, optimizer, record: dict) -> tuple[list[dict], int]:
    """(history, first step) from the last checkpoint made with the same training config, or a fresh start."""
    if not checkpoint.exists():
        return [], 0
    tensors, meta = load_tensors(checkpoint)
    if meta["config"] != record:
        raise ConfigError(
            "train_encoder",
            "(changed)",
            f"{checkpoint} was made with another training config; use a new run folder or delete the checkpoint",
        )
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, meta["param_groups"])
    log.info("train_encoder: resuming from step %d (%s)", meta["step"], checkpoint)
    return meta["history"], meta["step"]


def learning_rate_at(config: TrainEncoderConfig, step: int) -> float:
    """The rate of 0-based `step`: linear warm-up over warmup_steps, then constant or a cosine decay to 0 at the
    last step. A function of the step alone, so a resumed run follows the same schedule."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.learning_rate


def _train_step(model, optimizer, config, waves, labels, train_ids, segment, step, seed, device) -> dict:
    """One optimizer step on a batch drawn from a generator seeded by (seed, step); the history entry."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    device_generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
    picks = [train_ids[int(i)] for i in torch.randint(len(train_ids), (config.batch_size,), generator=generator)]
    picked_labels = [labels[i] for i in picks] if labels is not None else None
    loss, stats = model.training_loss(
        [waves[i] for i in picks], picked_labels, segment, config, step, generator, device_generator, device
    )
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(config, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return {"step": step + 1, "loss": loss.item(), "grad_norm": float(grad_norm), **stats}


@torch.no_grad()
def validate(model, waves, labels, val_ids, segment, config, device) -> float:
    was_training = model.training
    model.eval()
    picked_labels = [labels[i] for i in val_ids] if labels is not None else None
    loss = model.validation_loss([waves[i] for i in val_ids], picked_labels, segment, config, device)
    model.train(was_training)
    return loss


def _save_checkpoint(path, model, optimizer, step, history, record) -> None:
    tensors, groups = optimizer_tensors(optimizer)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    save_tensors(path, tensors, {"step": step, "history": history, "config": record, "param_groups": groups})
