"""Feature extractors: waveform (num_samples,) -> frames (num_frames, dim). One registration line per family."""

from ..config import FeatureConfig
from ..registry import Registry
from .base import FeatureExtractor, normalize_utterance

FEATURES = Registry("features.name")
FEATURES.register("mfcc_hubert", "speechvq.features.mfcc:KaldiMFCCExtractor")
FEATURES.register("mfcc", "speechvq.features.mfcc:LibrosaMFCCExtractor")
FEATURES.register("fbank", "speechvq.features.mfcc:FbankExtractor")
FEATURES.register("encoder", "speechvq.features.encoder:EncoderExtractor")
FEATURES.register("ssl", "speechvq.features.ssl_model:SSLExtractor")


def build_extractor(config: FeatureConfig) -> FeatureExtractor:
    """The extractor of the family config.name names."""
    return FEATURES.get(config.name)(config)


__all__ = ["FEATURES", "FeatureExtractor", "build_extractor", "normalize_utterance"]
