"""Configuration schemas as plain dataclasses. run.py registers them in Hydra's ConfigStore so a
typo in a key or a misspelled choice fails at start-up; the library only ever sees these dataclasses.
`check_config` then checks every value's range and the combinations, before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Choice(str, Enum):
    """An enum-like option: typed in the schema, so Hydra refuses a misspelling when it composes the config,
    and equal to its plain string, so `precision == "fast"`, JSON and the run keys all see the value."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> list[str]:
        return [member.value for member in cls]


def _choice(name: str, values: tuple[str, ...]) -> type[Choice]:
    # The functional form, because some values ("raise", "global") are Python keywords.
    return Choice(name, [(value, value) for value in values])


OnError = _choice("OnError", ("raise", "skip"))
Normalize = _choice("Normalize", ("none", "utterance", "utterance_l2", "global"))
Precision = _choice("Precision", ("exact", "fast"))
LayerReduction = _choice("LayerReduction", ("concat", "mean", "tokens"))
Dtype = _choice("Dtype", ("float32", "bfloat16"))  # bfloat16: autocast (CUDA, or CPUs with bf16 support)
AbxDistance = _choice("AbxDistance", ("angular", "euclidean", "kl", "kl_symmetric"))
FrontEnd = _choice("FrontEnd", ("logmel", "waveform"))
LrSchedule = _choice("LrSchedule", ("constant", "cosine"))
Stage = _choice("Stage", ("train_encoder", "features", "train", "quantize", "evaluate", "merge"))  # run order


@dataclass
class DataConfig:
    path: str | None = "data/demo"  # folder (recursive), fairseq .tsv or .jsonl manifest (required)
    alignments: str | None = None  # phone labels: a TSV at 100 Hz, or a folder of Praat TextGrids
    alignment_rate_hz: float = 100.0  # frame rate of the TSV labels
    speakers: str | None = None  # utt_id<TAB>speaker TSV (ABX in the evaluate stage needs it with alignments)
    split: str = "train"  # name of the output files: <split>.km, <split>.tsv
    num_workers: int = 2  # decoding processes (0 = decode in the main process)
    batch_seconds: float = 60.0  # audio per feature-extraction batch (bounds the memory of the features stage)
    part_mb: float = 16.0  # features are written (and resumable) in parts of this size
    on_error: OnError = OnError["raise"]  # raise | skip (skipped files are listed in errors.tsv)
    num_shards: int = 1  # fairseq's rule: shard r of n takes utterances [round(N*r/n), round(N*(r+1)/n))
    shard_index: int = 0


@dataclass
class FeatureConfig:
    name: str = "mfcc_hubert"  # mfcc_hubert | mfcc | fbank
    sample_rate: int = 16000  # audio is resampled to this rate
    num_ceps: int = 13  # cepstral coefficients (mfcc_hubert, mfcc)
    num_mel_bins: int = 23  # mel filters
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    deltas: bool = True  # append deltas and delta-deltas (mfcc_hubert, mfcc)
    # none | utterance (CMVN per utterance) | utterance_l2 (CMVN, then each frame scaled to length sqrt(dim): k-means
    # by angle) | global (stats stored with the codebook)
    normalize: Normalize = Normalize["none"]
    checkpoint: str | None = None  # encoder / ssl: model weights (encoder: a run folder works too)
    ssl_model: str = "hubert_base"  # ssl: architecture of a bare state dict (hubert|wav2vec2|wavlm _base|_large)
    # ssl, encoder: the layer whose output is the feature (0 = Transformer input / front end, L = layer L's output;
    # ssl: transformers' hidden_states[L]). ssl and encoder also take a list of layers, combined by layer_reduction
    # (encoder: concat only).
    layer: Any = 6
    # ssl, several layers: concat | mean | tokens (k-means: one codebook and one unit stream per layer)
    layer_reduction: LayerReduction = LayerReduction["concat"]
    dtype: Dtype = Dtype["float32"]  # ssl: float32 | bfloat16 (autocast, for GPUs)
    chunk_s: float = 30.0  # ssl, encoder: longer audio runs in chunks of this length with 1 s of context each side

    def to_dict(self) -> dict:
        """The recorded feature config. Fields added after the first codebook format appear only when they differ
        from their default, so codebooks made before they existed keep their fingerprints and stay compatible."""
        recorded = asdict(self)
        for key, default in (("layer_reduction", "concat"), ("dtype", "float32")):
            if recorded[key] == default:
                del recorded[key]
        return recorded


@dataclass
class EncoderModelConfig:
    """Conv encoder (wav2vec 2.0 feature-encoder family) and log-mel decoder sizes."""

    channels: int = 512
    kernels: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    strides: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])  # 320 samples = 20 ms at 16 kHz
    code_dim: int = 64
    decoder_channels: int = 256


@dataclass
class QuantizerConfig:
    name: str = "vq_ema"  # vq_ema | gumbel | residual | product
    codebook_size: int = 256  # entries per codebook
    num_codebooks: int = 1  # residual stages | product groups | gumbel groups
    commitment: float = 0.25  # vq_ema-based: weight of ||z - sg(q)||^2
    ema_decay: float = 0.99
    dead_code_steps: int = 50  # re-seed a code unused for this many steps (0 = never)
    kmeans_init: bool = True  # initialise codebooks by k-means on the first batch
    quantizer_dropout: bool = True  # residual: train on a random number of stages per batch
    diversity_weight: float = 0.1  # gumbel
    gumbel_temperature: list[float] = field(default_factory=lambda: [2.0, 0.5])  # annealed start -> end


@dataclass
class ObjectiveConfig:
    """What train_encoder learns. reconstruction: the conv VQ-VAE rebuilds the log-mel (`model`, `quantizer`);
    masked_prediction: HuBERT, a front end + Transformer predicts an earlier run's units at masked frames;
    contrastive: wav2vec 2.0, the same encoder picks each masked frame's Gumbel-quantized target among distractors."""

    name: str = "reconstruction"  # reconstruction | masked_prediction | contrastive
    targets: str | None = None  # masked_prediction: a run folder whose units.jsonl are the targets
    front_end: FrontEnd = FrontEnd["logmel"]  # masked_prediction, contrastive: logmel | waveform (conv encoder)
    dim: int = 192  # masked_prediction, contrastive: Transformer width, depth and heads
    layers: int = 4
    heads: int = 4
    proj_dim: int = 256  # space of the cosine similarity with the unit embeddings
    temperature: float = 0.1
    mask_prob: float = 0.08  # probability that a frame starts a masked span (HuBERT's p: about half the frames masked)
    mask_span: int = 10  # frames per masked span (10 = 200 ms at 50 Hz)
    unmasked_weight: float = 0.0  # weight of the loss on unmasked frames
    num_negatives: int = 100  # contrastive: distractors per masked frame, from the same utterance's masked frames
    feature_penalty: float = 0.1  # contrastive: weight of the mean squared front-end frame (before its layer norm)


@dataclass
class TrainEncoderConfig:
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    model: EncoderModelConfig = field(default_factory=EncoderModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    data_path: str | None = None  # train on this audio (folder or manifest) instead of data.path
    steps: int = 2000
    batch_size: int = 16
    segment_s: float = 1.0  # random crops of this length (shorter utterances are zero-padded)
    learning_rate: float = 1e-3
    warmup_steps: int = 0  # linear warm-up from 0 to learning_rate over these steps
    lr_schedule: LrSchedule = LrSchedule["constant"]  # constant | cosine (decays to 0 at the last step)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    validation_fraction: float = 0.05
    validate_every: int = 100
    checkpoint_every: int = 100
    keep_snapshots: bool = False  # also keep the model at each checkpoint (encoder/snapshots/stepNNNNNNN.safetensors)
    max_train_seconds: float = 3600.0  # audio held in memory for training (a capped subset of the data)
    # masked_prediction, contrastive: this share of the training crops band-limited to 4 kHz (resampled to 8 kHz and
    # back), targets unchanged, so the encoder learns telephone-band speech (FSDD is 8 kHz) from the same labels
    narrowband_share: float = 0.0
    dtype: Dtype = Dtype["float32"]  # float32 | bfloat16 (autocast of the forward pass; weights stay float32)
    # Each step's batch_size utterances are split over the torchrun ranks and, on each, into this many pieces
    # whose gradients add up (less memory, the same update): batch_size must be a multiple of ranks x pieces.
    micro_batches: int = 1


@dataclass
class CodebookConfig:
    name: str = "kmeans"  # kmeans | encoder (the trained encoder's own quantizer)
    path: str | None = None  # reuse a trained codebook (.safetensors or a run folder) instead of training
    codebook_size: int = 100
    max_iter: int = 100
    tol: float = 1e-4  # stop when the relative inertia improvement falls below this
    n_init: int = 3  # restarts from independent k-means++ seeds; the lowest inertia wins
    max_train_frames: int = 1_000_000  # frames sampled uniformly across utterances for training
    chunk_size: int | None = None  # frames per distance block (null: 4096 on CPU, 524288 on CUDA)
    precision: Precision = Precision[
        "exact"
    ]  # exact (fp32 GEMMs) | fast (CUDA: TF32 assignment, atomics-free label-segment sums)
    checkpoint_every_s: float = 30.0  # k-means state saved this often (0: every iteration); a rerun resumes it


@dataclass
class QuantizeConfig:
    chunk_size: int | None = None  # frames per distance block (null: 4096 on CPU, 524288 on CUDA)
    precision: Precision = Precision[
        "exact"
    ]  # exact | fast (CUDA, large dims: fused fp16 top-2 kernel, near ties re-ranked exactly)
    dedup: bool = True  # also write run-length deduplicated units with durations


@dataclass
class AbxConfig:
    """ABX error rates (ZeroSpeech / libri-light) from triphone items made of data.alignments and data.speakers."""

    enabled: bool = True  # runs when data.alignments and data.speakers are both set
    distance: AbxDistance = AbxDistance["angular"]  # angular | euclidean | kl | kl_symmetric
    # features: the frames as the units are assigned (normalized as the codebook sees them); units: one-hot of the
    # first stream's units; codewords: each frame's codeword vector
    inputs: list[str] = field(default_factory=lambda: ["features", "units"])
    max_size_group: int = 10  # larger (context, speaker, phone) groups are subsampled (seeded)
    max_x_across: int = 5  # X speakers drawn per across-speaker comparison
    seed: int = 3459


@dataclass
class RobustnessConfig:
    """Unit edit distance between clean and augmented audio (noise 20 / 10 dB, speed, pitch, reverb)."""

    num_files: int = 20  # evenly spread over the dataset; 0: off
    seed: int = 0


@dataclass
class EvaluateConfig:
    plot: bool = True  # codebook usage PNG
    alignment_tolerance_frames: int = 3  # allowed length difference between units and labels
    reconstruction: bool = True  # log-mel distances of the reconstruction from units (where defined)
    resynthesize: int = 0  # write this many Griffin-Lim WAVs from units beside the originals
    # utterance ids to probe for cross-speaker word identity: a regex with groups speaker and label (FSDD names)
    word_probe: str | None = r"(?:^|/)(?P<label>\d)_(?P<speaker>[a-z]+)_\d+$"
    abx: AbxConfig = field(default_factory=AbxConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


@dataclass
class MergeConfig:
    inputs: str | None = None  # a folder whose subfolders are the shard runs (e.g. a Hydra multirun folder)


@dataclass
class OutputConfig:
    overwrite: bool = False  # allow replacing a run folder's outputs that were made with a different config


@dataclass
class IterationConfig:
    """HuBERT's iterations in one run (speechvq/iterate.py): iteration 1 = MFCC k-means, then count - 1 rounds of
    masked prediction of the previous units and k-means on layer features.layer."""

    count: int = 0  # 0: an ordinary run
    train_data: str | None = None  # audio for the k-means targets and the training (null: data.path)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    train_encoder: TrainEncoderConfig = field(default_factory=TrainEncoderConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    iteration: IterationConfig = field(default_factory=IterationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    stages: list[Stage] = field(
        default_factory=lambda: [Stage[s] for s in ("features", "train", "quantize", "evaluate")]
    )
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0


# ---------------------------------------------------------------- checks before any work
# Every value a run reads is checked here, at start-up, so an impossible setting fails in a second with its key
# named instead of after features and training (or, worse, runs and writes wrong outputs). Checks that need the
# data (more codewords than frames) stay where the data is first seen.

CHOICES = {
    "data.on_error": OnError,
    "features.normalize": Normalize,
    "codebook.precision": Precision,
    "quantize.precision": Precision,
    "train_encoder.lr_schedule": LrSchedule,
    "train_encoder.objective.front_end": FrontEnd,
    "features.layer_reduction": LayerReduction,
    "features.dtype": Dtype,
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
    from .errors import ConfigError

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
    """Names of swappable parts against their registries (imported here: the registries import the library)."""
    from .encoder import OBJECTIVES
    from .encoder.quantizers import QUANTIZERS
    from .features import FEATURES
    from .features.ssl_model import SSL_MODELS
    from .units import UNIT_KINDS

    FEATURES.check(config.features.name)
    SSL_MODELS.check(config.features.ssl_model)
    UNIT_KINDS.check(config.codebook.name)
    QUANTIZERS.check(config.train_encoder.quantizer.name)
    OBJECTIVES.check(config.train_encoder.objective.name)


def _check_layer(layer, features_name: str) -> None:
    """An index >= 0; features=ssl and features=encoder also take a non-empty list of them."""
    from .errors import ConfigError

    takes_lists = features_name in ("ssl", "encoder")
    layers = list(layer) if takes_lists and not isinstance(layer, int | str | float) else [layer]
    if not layers or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
        allowed = "an index >= 0, or a non-empty list of them" if takes_lists else "an index >= 0"
        shown = layer if isinstance(layer, int | str | float) or layer is None else list(layer)
        raise ConfigError("features.layer", shown, f"must be {allowed}")


def _check_objective(config: RunConfig) -> None:
    from .encoder import OBJECTIVES
    from .errors import ConfigError

    objective = config.train_encoder.objective
    needs_targets = OBJECTIVES.get(objective.name).needs_targets
    if "train_encoder" in config.stages and needs_targets and not objective.targets and not config.iteration.count:
        raise ConfigError(
            "train_encoder.objective.targets", None, f"{objective.name} needs the run folder of its targets"
        )
    if not objective.mask_prob < 1:
        raise ConfigError("train_encoder.objective.mask_prob", objective.mask_prob, "must be below 1")
    if objective.dim % objective.heads:
        raise ConfigError(
            "train_encoder.objective.heads", objective.heads, f"must divide objective.dim={objective.dim}"
        )
    from .encoder.train import check_parallel

    # the ranks only where train_encoder runs (a k-means job under torchrun need not fit its batch)
    check_parallel(config.train_encoder, None if "train_encoder" in config.stages or config.iteration.count else 1)
    quantizer = config.train_encoder.quantizer
    if objective.name == "contrastive" and quantizer.name != "gumbel":
        raise ConfigError("train_encoder.quantizer.name", quantizer.name, "the contrastive objective uses gumbel")
    if objective.name == "contrastive" and objective.dim % quantizer.num_codebooks:
        raise ConfigError(
            "train_encoder.quantizer.num_codebooks",
            quantizer.num_codebooks,
            f"must divide objective.dim={objective.dim}",
        )


def _check_iteration(config: RunConfig) -> None:
    from .errors import ConfigError

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


def _check_combinations(config: RunConfig) -> None:
    from .errors import ConfigError
    from .features import FEATURES
    from .units import UNIT_KINDS

    d, f, t = config.data, config.features, config.train_encoder
    if not d.path and any(stage in config.stages for stage in ("train_encoder", "features")):
        raise ConfigError("data.path", d.path, "name the dataset: a folder, a fairseq .tsv or a .jsonl manifest")
    family = FEATURES.get(f.name)
    if family.needs_weights and not family.checkpoint_defaults_to_run and not f.checkpoint:
        raise ConfigError("features.checkpoint", f.checkpoint, f"features={f.name} needs local weights")
    if not 0 <= d.shard_index < d.num_shards:
        raise ConfigError("data.shard_index", d.shard_index, f"must be in 0..{d.num_shards - 1} (data.num_shards)")
    _check_layer(f.layer, f.name)
    required = UNIT_KINDS.get(config.codebook.name).required_features
    if required and f.name != required:
        raise ConfigError("codebook.name", config.codebook.name, f"works on features={required}, not {f.name}")
    if required and f.normalize != "none":
        reason = f"codebook={config.codebook.name} quantizes the frames its model made, not normalized ones"
        raise ConfigError("features.normalize", f.normalize, reason)
    if "merge" in config.stages and not config.merge.inputs:
        raise ConfigError("merge.inputs", None, "stage merge needs the folder whose subfolders are the shard runs")
    _check_objective(config)
    _check_iteration(config)
    unknown = [name for name in config.evaluate.abx.inputs if name not in ("features", "units", "codewords")]
    if unknown or not config.evaluate.abx.inputs:
        inputs = list(config.evaluate.abx.inputs)
        raise ConfigError("evaluate.abx.inputs", inputs, "choose from features, units, codewords")
    if config.evaluate.word_probe:
        from .probe import word_pattern

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
