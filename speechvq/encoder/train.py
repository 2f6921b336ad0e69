"""Training loop for the VQ-VAE. Each step's batch (which utterances, which crops, the Gumbel noise, the
dead-code picks) comes from a generator seeded by (seed, step), so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import TrainEncoderConfig
from ..errors import ConfigError
from .checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_tensors,
    state_fingerprint,
)
from .model import VQVAE

log = logging.getLogger(__name__)


def split_validation(num_utterances: int, fraction: float) -> tuple[list[int], list[int]]:
    """Every k-th utterance is held out (deterministic, spread over the dataset)."""
    count = min(num_utterances - 1, max(1, round(num_utterances * fraction))) if fraction > 0 else 0
    held = set(round(i * num_utterances / count) for i in range(count)) if count else set()
    return [i for i in range(num_utterances) if i not in held], sorted(held)


def crop_batch(waves: list[torch.Tensor], picks: list[int], segment: int, generator: torch.Generator) -> torch.Tensor:
    batch = torch.zeros(len(picks), segment)
    for row, index in enumerate(picks):
        wave = waves[index]
        if wave.numel() > segment:
            start = int(torch.randint(wave.numel() - segment + 1, (1,), generator=generator))
            batch[row] = wave[start : start + segment]
        else:
            batch[row, : wave.numel()] = wave
    return batch


def gumbel_temperature(config: TrainEncoderConfig, step: int) -> float:
    start, end = config.quantizer.gumbel_temperature
    decay = (end / start) ** (1.0 / max(1, int(0.7 * config.steps)))  # reaches `end` at 70 % of training
    return max(start * decay**step, end)


def config_record(config: TrainEncoderConfig, sample_rate: int) -> dict:
    return {"train_encoder": dataclasses.asdict(config), "sample_rate": sample_rate}


def train_encoder_model(
    config: TrainEncoderConfig,
    waves: list[torch.Tensor],
    out_dir: Path,
    device: torch.device,
    seed: int,
    sample_rate: int = 16000,
) -> tuple[VQVAE, list[dict]]:
    """Train on `waves` (mono float32 at sample_rate); checkpoints, the final model and history go to out_dir."""
    for key in ("steps", "batch_size"):
        if getattr(config, key) < 1:  # zero steps would save an untrained model as if trained
            raise ConfigError(f"train_encoder.{key}", getattr(config, key), "must be at least 1")
    if len(waves) < 2:
        raise ConfigError("train_encoder", f"{len(waves)} utterances", "training needs at least 2 utterances")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # parameter initialisation only; every later draw uses explicit generators
    model = VQVAE(config.model, config.quantizer, sample_rate).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    record = config_record(config, sample_rate)
    checkpoint = out_dir / CHECKPOINT_FILE
    history, first_step = _resume(checkpoint, model, optimizer, record)
    train_ids, val_ids = split_validation(len(waves), config.validation_fraction)
    segment = round(config.segment_s * sample_rate)
    bar = tqdm(
        range(first_step, config.steps), initial=first_step, total=config.steps, desc="train_encoder", disable=None
    )
    model.train()
    for step in bar:
        entry = _train_step(model, optimizer, config, waves, train_ids, segment, step, seed, device)
        if val_ids and ((step + 1) % config.validate_every == 0 or step + 1 == config.steps):
            entry["val_reconstruction"] = validate(model, [waves[i] for i in val_ids], segment, device)
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", ppl=f"{entry['perplexity']:.0f}", usage=f"{entry['usage']:.2f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            _save_checkpoint(checkpoint, model, optimizer, step + 1, history, record)
    bar.close()
    model.eval()
    state = {k: v for k, v in model.state_dict().items()}
    meta = {
        **record,
        "frame_rate_hz": model.frame_rate_hz,
        "fingerprint": state_fingerprint(state),
        "steps": config.steps,
        "final": history[-1] if history else {},
    }
    save_tensors(out_dir / MODEL_FILE, state, meta)
    _save_checkpoint(checkpoint, model, optimizer, config.steps, history, record)
    return model, history


def _resume(checkpoint: Path, model: VQVAE, optimizer, record: dict) -> tuple[list[dict], int]:
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


def _train_step(model, optimizer, config, waves, train_ids, segment, step, seed, device) -> dict:
    """One optimizer step on a batch drawn from a generator seeded by (seed, step); the history entry."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    device_generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
    picks = [train_ids[int(i)] for i in torch.randint(len(train_ids), (config.batch_size,), generator=generator)]
    batch = crop_batch(waves, picks, segment, generator).to(device)
    if hasattr(model.quantizer, "temperature"):
        model.quantizer.temperature = gumbel_temperature(config, step)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(batch, device_generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return {
        "step": step + 1,
        "loss": out.loss.item(),
        "reconstruction": out.reconstruction_loss.item(),
        "grad_norm": float(grad_norm),
        **{k: float(v) for k, v in out.quantizer.stats.items()},
    }


@torch.no_grad()
def validate(model: VQVAE, waves: list[torch.Tensor], segment: int, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    batch = crop_batch(waves, list(range(len(waves))), segment, torch.Generator().manual_seed(0)).to(device)
    loss = float(model(batch).reconstruction_loss)
    model.train(was_training)
    return loss


def _save_checkpoint(path, model, optimizer, step, history, record) -> None:
    tensors, groups = optimizer_tensors(optimizer)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    save_tensors(path, tensors, {"step": step, "history": history, "config": record, "param_groups": groups})
