"""The training loop every objective shares. Each step's batch (which utterances, which crops, the masks, the
Gumbel noise, the dead-code picks) comes from a generator seeded by (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have. The objective's model (OBJECTIVES) builds its
own batch from the picked waveforms and returns its loss.

Data parallel under torchrun: every rank draws the same step's utterances, which are dealt into ranks x
micro_batches pieces, each with a generator of its own; a rank runs its pieces and the gradients are summed over
ranks (one all-reduce), so every rank takes the same optimizer step and holds the same weights. N ranks give the
update of one process that splits the batch into N micro-batches, up to float addition order. Rank 0 alone
validates and writes the checkpoints and the model."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import TrainEncoderConfig
from ..errors import ConfigError
from ..ranks import process_group
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
    """What a checkpoint must have been made with to be resumed. micro_batches is left out (it does not change the
    update, so a run may resume with another split), dtype when float32 (records made before it existed match)."""
    record = dataclasses.asdict(config)
    del record["micro_batches"]
    if record["dtype"] == "float32":
        del record["dtype"]
    return {"train_encoder": record, "sample_rate": sample_rate}


def check_parallel(config: TrainEncoderConfig, world: int | None = None) -> int:
    """How many pieces each step's batch is split into (ranks x micro_batches); a ConfigError if it cannot be."""
    world = process_group()[1] if world is None else world
    pieces = world * config.micro_batches
    if config.batch_size % pieces:
        raise ConfigError(
            "train_encoder.batch_size",
            config.batch_size,
            f"must be a multiple of {world} rank(s) x micro_batches={config.micro_batches}",
        )
    if world > 1 and not OBJECTIVES.get(config.objective.name).data_parallel:
        raise ConfigError(
            "train_encoder.objective.name",
            config.objective.name,
            "its model does not train data parallel (the reconstruction VQ-VAE's EMA codebook statistics are not "
            "synchronised across ranks): train it in one process",
        )
    return pieces


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
    check_parallel(config)
    rank, world = process_group()
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
    steps = range(first_step, config.steps)
    bar = tqdm(steps, initial=first_step, total=config.steps, desc="train_encoder", disable=None if rank == 0 else True)
    model.train()
    for step in bar:
        entry = _train_step(model, optimizer, config, waves, labels, train_ids, segment, step, seed, device)
        entry["elapsed_s"] = round(time.perf_counter() - started, 3)
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
        if rank != 0:
            continue
        if val_ids and ((step + 1) % config.validate_every == 0 or step + 1 == config.steps):
            entry["val_loss"] = validate(model, waves, labels, val_ids, segment, config, device)
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            _save_checkpoint(checkpoint, model, optimizer, step + 1, history, record)
            if config.keep_snapshots:
                snapshot = out_dir / SNAPSHOTS_DIR / f"step{step + 1:07d}.safetensors"
                save_model(snapshot, model, record, step + 1, history)
    bar.close()
    model.eval()
    if rank == 0:
        save_model(out_dir / MODEL_FILE, model, record, config.steps, history)
        _save_checkpoint(checkpoint, model, optimizer, config.steps, history, record)
    if world > 1:
        dist.barrier()  # no rank goes on to read the model before rank 0 has written it
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
    base_seed = seed * 1_000_003 + step
    generator = torch.Generator().manual_seed(base_seed)
    picks = [train_ids[int(i)] for i in torch.randint(len(train_ids), (config.batch_size,), generator=generator)]
    rank, world = process_group()
    pieces = world * config.micro_batches
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for piece in range(rank * config.micro_batches, (rank + 1) * config.micro_batches):
        # piece 0 goes on with the picks' generator, so one process without micro-batches draws as it always has
        piece_seed = base_seed + piece * PIECE_SEED_STRIDE
        piece_generator = generator if piece == 0 else torch.Generator().manual_seed(piece_seed)
        device_generator = torch.Generator(device=device).manual_seed(piece_seed)
        mine = picks[piece::pieces]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16"):
            loss, stats = model.training_loss(
                [waves[i] for i in mine],
                [labels[i] for i in mine] if labels is not None else None,
                segment, config, step, piece_generator, device_generator, device,
            )  # fmt: skip
        (loss / pieces).backward()
        for key, value in {"loss": loss.item(), **stats}.items():
            totals[key] = totals.get(key, 0.0) + float(value) / pieces
    if world > 1:
        totals = _sum_over_ranks(model, totals, device)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(config, step)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return {"step": step + 1, **totals, "grad_norm": float(grad_norm)}


PIECE_SEED_STRIDE = 1 << 40  # far from every other step's seed (steps differ by 1)


def _sum_over_ranks(model: torch.nn.Module, totals: dict[str, float], device) -> dict[str, float]:
    """Every rank's gradients (each already divided by the number of pieces) and history figures, summed: one
    all-reduce of all gradients flattened, one of the figures (float64)."""
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    figures = torch.tensor(list(totals.values()), dtype=torch.float64, device=device)
    dist.all_reduce(figures)
    return dict(zip(totals, figures.tolist()))


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
