"""Configuration schemas as plain dataclasses. run.py registers them in Hydra's ConfigStore so a
typo in a key fails at start-up; the library only ever sees these dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DataConfig:
    path: str = "data/demo"  # folder (recursive), fairseq .tsv or .jsonl manifest
    alignments: str | None = None  # phone labels: a TSV at 100 Hz, or a folder of Praat TextGrids
    alignment_rate_hz: float = 100.0  # frame rate of the TSV labels
    split: str = "train"  # name of the output files: <split>.km, <split>.tsv
    num_workers: int = 2  # decoding processes (0 = decode in the main process)
    on_error: str = "raise"  # raise | skip (skipped files are listed in errors.tsv)


@dataclass
class FeatureConfig:
    name: str = "mfcc_hubert"  # mfcc_hubert | mfcc | fbank
    sample_rate: int = 16000  # audio is resampled to this rate
    num_ceps: int = 13  # cepstral coefficients (mfcc_hubert, mfcc)
    num_mel_bins: int = 23  # mel filters
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    deltas: bool = True  # append deltas and delta-deltas (mfcc_hubert, mfcc)
    normalize: str = "none"  # none | utterance (CMVN per utterance) | global (stats stored with the codebook)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CodebookConfig:
    name: str = "kmeans"
    path: str | None = None  # reuse a trained codebook (.safetensors or a run folder) instead of training
    codebook_size: int = 100
    max_iter: int = 100
    tol: float = 1e-4  # stop when the relative inertia improvement falls below this
    n_init: int = 3  # restarts from independent k-means++ seeds; the lowest inertia wins
    max_train_frames: int = 1_000_000  # frames sampled uniformly across utterances for training
    chunk_size: int = 65536  # frames per distance block


@dataclass
class QuantizeConfig:
    chunk_size: int = 65536  # frames per distance block
    dedup: bool = True  # also write run-length deduplicated units with durations


@dataclass
class EvaluateConfig:
    plot: bool = True  # codebook usage PNG
    alignment_tolerance_frames: int = 3  # allowed length difference between units and labels


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    stages: list[str] = field(default_factory=lambda: ["features", "train", "quantize", "evaluate"])
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
