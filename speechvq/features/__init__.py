"""Feature extractors: waveform (num_samples,) -> frames (num_frames, dim)."""

from .base import FeatureExtractor, build_extractor, normalize_utterance

__all__ = ["FeatureExtractor", "build_extractor", "normalize_utterance"]
