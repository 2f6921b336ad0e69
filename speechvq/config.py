"""Configuration schemas as plain dataclasses, enums and defaults, and nothing else: this module imports no other
part of speechvq, so every family can import its section from here. run.py registers the schema in Hydra's
ConfigStore so a typo in a key or a misspelled choice fails at start-up; checks.check_config then checks every
value's range and the combinations, before any work."""

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
Dtype = _choice("Dtype", ("float32", "bfloat16"))
StoreDtype = _choice("StoreDtype", ("float32", "float16"))
StoreMode = _choice("StoreMode", ("all", "sample", "none"))  # bfloat16: autocast (CUDA, or CPUs with bf16 support)
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
    # the stored frames' precision: float16 halves features/ on disk; the frames are rounded to it wherever units are
    # made (the quantize stage and speechvq.load alike), so it is part of what decides the units
    store_dtype: StoreDtype = StoreDtype["float32"]
    # which frames the features stage stores: all | sample (only k-means' training sample; quantize then decodes,
    # extracts and assigns in one pass over the audio) | none (quantize from audio with codebook.path). Not part of
    # the recorded feature config: it changes where frames are kept, not what they are.
    store: StoreMode = StoreMode["all"]

    def to_dict(self) -> dict:
        """The recorded feature config. Fields added after the first codebook format appear only when they differ
        from their default, so codebooks made before they existed keep their fingerprints and stay compatible."""
        recorded = asdict(self)
        del recorded["store"]
        for key, default in (("layer_reduction", "concat"), ("dtype", "float32"), ("store_dtype", "float32")):
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
    parquet: bool = False  # also write units.parquet (needs pyarrow: the speechvq[parquet] extra)


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
