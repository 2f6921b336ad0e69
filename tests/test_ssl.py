"""features=ssl with a locally saved, randomly initialised torchaudio HuBERT (nothing downloaded)."""

import pytest
import torch
import torchaudio
from conftest import speechlike
from safetensors.torch import save_file

from speechvq.config import FeatureConfig
from speechvq.errors import ConfigError
from speechvq.features import build_extractor


@pytest.fixture(scope="module")
def hubert_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = torchaudio.models.hubert_base()
    path = tmp_path_factory.mktemp("ssl") / "hubert_base_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_layer_features_shape_rate_and_padding_invariance(hubert_weights):
    extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(hubert_weights), layer=4))
    assert extractor.dim == 768 and extractor.frame_rate_hz == 50.0
    waves = [torch.from_numpy(speechlike(seconds, 16000, seed)) for seed, seconds in enumerate((1.0, 0.43, 1.61))]
    batch = extractor.extract_batch(waves)
    for wave, batched in zip(waves, batch):
        alone = extractor(wave)
        assert alone.shape == batched.shape == (extractor.num_frames(wave.numel()), 768)
        torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_layer_matches_torchaudio_extract_features(hubert_weights):
    extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(hubert_weights), layer=2))
    wave = torch.from_numpy(speechlike(0.7, 16000, 3))
    reference, _ = extractor.model.extract_features(wave.view(1, -1), num_layers=2)
    torch.testing.assert_close(extractor(wave), reference[-1][0], atol=1e-5, rtol=1e-5)


def test_long_audio_is_chunked_into_the_same_frame_grid(hubert_weights):
    """3.3 s in 1 s chunks with 1 s of context: frames [50k, 50k + 50) come from the model run on the window
    samples [16000 (k - 1), 16000 (k + 2)) (clipped to the file), frame 50k of the file being frame
    50k - 50 (k - 1) of that window. Computed here straight from torchaudio, so a stitching offset, a lost
    context or a missing last chunk all show."""
    extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(hubert_weights), layer=1, chunk_s=1.0))
    wave = torch.from_numpy(speechlike(3.3, 16000, 4))
    frames = extractor(wave)
    total = extractor.num_frames(wave.numel())
    assert frames.shape == (total, 768)
    for k in range(4):
        start = max(0, 16000 * (k - 1))
        window = wave[start : 16000 * (k + 2)]
        reference = extractor.model.extract_features(window.view(1, -1), num_layers=1)[0][-1][0]
        first, last = 50 * k, min(total, 50 * (k + 1))
        offset = start // 320
        torch.testing.assert_close(frames[first:last], reference[first - offset : last - offset], atol=1e-4, rtol=1e-4)
    # Context matters: a frame near the end of the first chunk differs from what a context-free 1 s window gives.
    alone = extractor.model.extract_features(wave[:16000].view(1, -1), num_layers=1)[0][-1][0]
    assert not torch.allclose(frames[45], alone[45], atol=1e-3)


def test_bad_layer_and_missing_weights(hubert_weights, tmp_path):
    with pytest.raises(ConfigError, match="features.layer"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(hubert_weights), layer=13))
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "none.safetensors")))


def test_utterance_normalization_of_layer_features(hubert_weights):
    """features.normalize=utterance: per-file zero mean and unit variance of the layer's frames (it was ignored)."""
    from speechvq.features import normalize_utterance

    waves = [torch.from_numpy(speechlike(seconds, 16000, seed)) for seed, seconds in enumerate((1.0, 0.43))]
    raw = build_extractor(FeatureConfig(name="ssl", checkpoint=str(hubert_weights), layer=3)).extract_batch(waves)
    config = FeatureConfig(name="ssl", checkpoint=str(hubert_weights), layer=3, normalize="utterance")
    for frames, plain in zip(build_extractor(config).extract_batch(waves), raw):
        torch.testing.assert_close(frames, normalize_utterance(plain), atol=1e-5, rtol=0)
        assert frames.std(0, unbiased=False).sub(1).abs().max() < 1e-3
