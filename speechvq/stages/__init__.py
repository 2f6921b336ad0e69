"""The stages of a run, one module each. A stage takes the config sections it reads, a RunFolder and the device,
reads what earlier stages left in the folder and returns a frozen value; speechvq.pipeline runs them in order."""

from .evaluate import evaluate
from .features import extract_features
from .merge import merge_shards
from .quantize import quantize_dataset
from .train import train_codebook
from .train_encoder import train_encoder

__all__ = ["evaluate", "extract_features", "merge_shards", "quantize_dataset", "train_codebook", "train_encoder"]
