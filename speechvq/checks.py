"""Checks before any work: every value a run reads, at start-up, so an impossible setting fails in a second with its
key named instead of after features and training (or, worse, runs and writes wrong outputs). Checks that need the
data (more codewords than frames) stay where the data is first seen.

This layer sits above the schema (config.py, which knows no family) and above the registries: a family's name is
checked against its registry, and what only a family knows is asked of its registered class (a feature
extractor's `takes_layer_lists` and weights, a unit kind's `required_features`, a training objective's
`check_config`), so adding a family touches its module, its conf yaml and one registration line."""

from __future__ import annotations

from .config import (
    AbxDistance,
    Dtype,
    FrontEnd,
    LayerReduction,
    LrSchedule,
    Normalize,
    OnError,
    Precision,
    RunConfig,
    Stage,
    StoreDtype,
    StoreMode,
)
from .encoder import OBJECTIVES
from .encoder.quantizers import QUANTIZERS
from .errors import ConfigError
from .features import FEATURES
from .features.ssl_checkpoint import SSL_MODELS
from .probe import word_pattern
from .unit_parquet import require_pyarrow
from .units import UNIT_KINDS

CHOICES = {
    "data.on_error": OnError,
    "features.normalize": Normalize,
    "codebook.precision": Precision,
    "quantize.precision": Precision,
    "train_encoder.lr_schedule": LrSchedule,
    "train_encoder.objective.front_end": FrontEnd,
    "features.layer_reduction": LayerReduction,
    "features.dtype": Dtype,
    "features.store_dtype": StoreDtype,
    "features.store": StoreMode,
    "train_encoder.dtype": Dtype,
    "evaluate.abx.distance": AbxDistance,
}
POSITIVE = (
    "data.alignment_rate_hz", "data.batch_seconds", "data.part_mb", "features.sample_rate",
    "features.frame_length_ms", "features.frame_shift_ms", "features.chunk_s", "train_encoder.segment_s",
    "train_encoder.learning_rate", "train_encoder.grad_clip", "train_encoder.max_train_seconds",
    "train_encoder.objective.temperature",
)  # fmt: skip
AT_LEAST = {
    "data.num_workers": 0, "data.num_shards": 1, "features.num_ceps": 1, "features.num_mel_bins": 1,
    "codebook.codebook_size": 1, "codebook.max_iter": 1, "codebook.n_init": 1,
    "codebook.max_train_frames": 1, "train_encoder.steps": 1, "train_encoder.batch_size": 1,
    "train_encoder.validate_every": 1, "train_encoder.checkpoint_every": 1, "train_encoder.weight_decay": 0,
    "train_encoder.warmup_steps": 0, "train_encoder.micro_batches": 1, "train_encoder.narrowband_share": 0,
    "train_encoder.validation_fraction": 0, "train_encoder.model.channels": 1, "train_encoder.model.code_dim": 1,
    "train_encoder.model.decoder_channels": 1, "train_encoder.quantizer.codebook_size": 1,
    "train_encoder.quantizer.num_codebooks": 1, "train_encoder.quantizer.dead_code_steps": 0,
    "evaluate.alignment_tolerance_frames": 0, "evaluate.resynthesize": 0, "train_encoder.objective.dim": 1,
    "train_encoder.objective.layers": 1, "train_encoder.objective.heads": 1, "train_encoder.objective.proj_dim": 1,
    "train_encoder.objective.mask_span": 1, "train_encoder.objective.mask_prob": 0,
    "train_encoder.objective.unmasked_weight": 0, "train_encoder.objective.num_negatives": 1,
    "train_encoder.objective.feature_penalty": 0, "iteration.count": 0, "evaluate.abx.max_size_group": 1,
    "evaluate.abx.max_x_across": 1, "evaluate.robustness.num_files": 0, "codebook.checkpoint_every_s": 0,
}  # fmt: skip
OPTIONAL_AT_LEAST = {"codebook.chunk_size": 1, "quantize.chunk_size": 1}


def _value(config: RunConfig, key: str):
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(config: RunConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work, the value and what is allowed."""
    for key, choice in CHOICES.items():
        if _value(config, key) not in choice.values():
            raise ConfigError(key, _value(config, key), f"choose one of {choice.values()}")
    unknown = [stage for stage in config.stages if stage not in Stage.values()]
    if unknown:
        raise ConfigError("stages", list(config.stages), f"unknown {unknown}; choose from {Stage.values()}")
    for key in POSITIVE:
        if not _is_number(_value(config, key)) or not _value(config, key) > 0:
            raise ConfigError(key, _value(config, key), "must be a number > 0")
    for key, low in {**AT_LEAST, **OPTIONAL_AT_LEAST}.items():
        value = _value(config, key)
        if value is None and key in OPTIONAL_AT_LEAST:
            continue
        if not _is_number(value) or value < low:
            optional = " (or null)" if key in OPTIONAL_AT_LEAST else ""
            raise ConfigError(key, value, f"must be a number >= {low}{optional}")
    _check_families(config)
    _check_combinations(config)


def _check_families(config: RunConfig) -> None:
    """Names of swappable parts against their registries."""
    FEATURES.check(config.features.name)
    SSL_MODELS.check(config.features.ssl_model)
    UNIT_KINDS.check(config.codebook.name)
    QUANTIZERS.check(config.train_encoder.quantizer.name)
    OBJECTIVES.check(config.train_encoder.objective.name)


def _check_layer(layer, takes_lists: bool) -> None:
    """An index >= 0; families that take several layers (takes_layer_lists) also a non-empty list of them."""
    layers = list(layer) if takes_lists and not isinstance(layer, int | str | float) else [layer]
    if not layers or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
        allowed = "an index >= 0, or a non-empty list of them" if takes_lists else "an index >= 0"
        shown = layer if isinstance(layer, int | str | float) or layer is None else list(layer)
        raise ConfigError("features.layer", shown, f"must be {allowed}")


def _check_objective(config: RunConfig) -> None:
    from .encoder.train import check_parallel

    objective = config.train_encoder.objective
    model = OBJECTIVES.get(objective.name)
    trains = "train_encoder" in config.stages
    if trains and model.needs_targets and not objective.targets and not config.iteration.count:
        raise ConfigError(
            "train_encoder.objective.targets", None, f"{objective.name} needs the run folder of its targets"
        )
    if not objective.mask_prob < 1:
        raise ConfigError("train_encoder.objective.mask_prob", objective.mask_prob, "must be below 1")
    if objective.dim % objective.heads:
        raise ConfigError(
            "train_encoder.objective.heads", objective.heads, f"must divide objective.dim={objective.dim}"
        )
    # the ranks only where train_encoder runs (a k-means job under torchrun need not fit its batch)
    check_parallel(config.train_encoder, None if trains or config.iteration.count else 1)
    model.check_config(config.train_encoder)


def _check_iteration(config: RunConfig) -> None:
    if not config.iteration.count:
        return
    wanted = {
        "features.name": ("encoder", config.features.name),
        "codebook.name": ("kmeans", config.codebook.name),
        "train_encoder.objective.name": ("masked_prediction", config.train_encoder.objective.name),
    }
    for key, (value, got) in wanted.items():
        if got != value:
            raise ConfigError(key, got, f"iteration.count > 0 runs HuBERT's iterations: needs {value}")
    if config.codebook.path:
        raise ConfigError("codebook.path", config.codebook.path, "each iteration trains its own codebook")


def _check_store(config: RunConfig) -> None:
    """store=none keeps no frames, so nothing can train a codebook on them."""
    trains = UNIT_KINDS.get(config.codebook.name).trains_codebook
    if config.features.store == "none" and trains and not config.codebook.path:
        raise ConfigError("features.store", "none", "stores no frames to train on: give codebook.path, or use sample")
    if config.features.store != "all" and config.iteration.count:
        raise ConfigError("features.store", config.features.store, "HuBERT's iterations (iteration.count) need all")


def _check_combinations(config: RunConfig) -> None:
    d, f, t = config.data, config.features, config.train_encoder
    if not d.path and any(stage in config.stages for stage in ("train_encoder", "features")):
        raise ConfigError("data.path", d.path, "name the dataset: a folder, a fairseq .tsv or a .jsonl manifest")
    family = FEATURES.get(f.name)
    if family.needs_weights and not family.checkpoint_defaults_to_run and not f.checkpoint:
        raise ConfigError("features.checkpoint", f.checkpoint, f"features={f.name} needs local weights")
    if not 0 <= d.shard_index < d.num_shards:
        raise ConfigError("data.shard_index", d.shard_index, f"must be in 0..{d.num_shards - 1} (data.num_shards)")
    _check_layer(f.layer, family.takes_layer_lists)
    required = UNIT_KINDS.get(config.codebook.name).required_features
    if required and f.name != required:
        raise ConfigError("codebook.name", config.codebook.name, f"works on features={required}, not {f.name}")
    if required and f.normalize != "none":
        reason = f"codebook={config.codebook.name} quantizes the frames its model made, not normalized ones"
        raise ConfigError("features.normalize", f.normalize, reason)
    _check_store(config)
    if config.quantize.parquet and "quantize" in config.stages:
        require_pyarrow()
    if "merge" in config.stages and not config.merge.inputs:
        raise ConfigError("merge.inputs", None, "stage merge needs the folder whose subfolders are the shard runs")
    _check_objective(config)
    _check_iteration(config)
    unknown = [name for name in config.evaluate.abx.inputs if name not in ("features", "units", "codewords")]
    if unknown or not config.evaluate.abx.inputs:
        inputs = list(config.evaluate.abx.inputs)
        raise ConfigError("evaluate.abx.inputs", inputs, "choose from features, units, codewords")
    if config.evaluate.word_probe:
        word_pattern(config.evaluate.word_probe)
    if not t.validation_fraction < 1:
        raise ConfigError("train_encoder.validation_fraction", t.validation_fraction, "must be below 1")
    if not t.narrowband_share <= 1:
        raise ConfigError("train_encoder.narrowband_share", t.narrowband_share, "must be a share in [0, 1]")
    if not 0 < t.quantizer.ema_decay < 1:
        raise ConfigError("train_encoder.quantizer.ema_decay", t.quantizer.ema_decay, "must be in (0, 1)")
    temperature = list(t.quantizer.gumbel_temperature)
    if len(temperature) != 2 or not all(_is_number(v) and v > 0 for v in temperature):
        raise ConfigError("train_encoder.quantizer.gumbel_temperature", temperature, "must be [start, end], both > 0")
    m = t.model
    if not m.kernels or len(m.kernels) != len(m.strides) or min(list(m.kernels) + list(m.strides)) < 1:
        raise ConfigError("train_encoder.model.kernels", list(m.kernels), "kernels and strides: same length, >= 1")
