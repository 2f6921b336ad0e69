import librosa
import numpy as np
import pytest
import torch
import torchaudio
from conftest import speechlike

from speechvq.config import FeatureConfig
from speechvq.errors import ConfigError
from speechvq.features import build_extractor

# How far float32 arithmetic of the Kaldi recipe lands from its float64 result: up to 6e-4 on these signals (the
# log of quiet frames' energies), for torchaudio's float32 path and speechvq's alike. A wrong step is off by far more
# (a Povey exponent of 1 instead of 0.85, or pre-emphasis 0.95 instead of 0.97, moves cepstra by 0.05 to 1).
FLOAT32_NOISE = 1e-3


def in_float64(kaldi_function, samples: torch.Tensor, **options) -> torch.Tensor:
    """torchaudio.compliance.kaldi's features computed in float64 throughout (its constants too: it makes them in the
    default dtype), rounded to float32: the reference speechvq's float32 arithmetic is held to. torchaudio's own
    float32 constants come from the CPU's pow, log and cos kernels and differ from one CPU to the next, which
    speechvq's (made in float64, kaldi_batched) do not."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return kaldi_function(samples.double().view(1, -1), **options).float()
    finally:
        torch.set_default_dtype(saved)


def fairseq_mfcc(samples: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """fairseq examples/hubert/simple_kmeans/dump_mfcc_feature.py, MfccFeatureReader.get_feats."""
    x = samples.float().view(1, -1)
    mfccs = in_float64(torchaudio.compliance.kaldi.mfcc, x, sample_frequency=sample_rate, use_energy=False).T
    deltas = torchaudio.functional.compute_deltas(mfccs)
    ddeltas = torchaudio.functional.compute_deltas(deltas)
    return torch.cat([mfccs, deltas, ddeltas], dim=0).transpose(0, 1).contiguous()


@pytest.mark.parametrize("seconds", [0.03, 0.5, 2.37])
def test_mfcc_hubert_matches_fairseq_recipe(seconds):
    samples = torch.from_numpy(speechlike(seconds, 16000, seed=3))
    extractor = build_extractor(FeatureConfig(name="mfcc_hubert"))
    ours = extractor(samples)
    reference = fairseq_mfcc(samples, 16000)
    assert ours.shape == reference.shape == (extractor.num_frames(samples.numel()), 39)
    assert extractor.frame_rate_hz == 100.0
    torch.testing.assert_close(ours, reference, atol=FLOAT32_NOISE, rtol=0)


def test_mfcc_matches_librosa():
    # Tolerance: 1e-3 absolute on coefficients of magnitude up to ~500 (observed max difference ~1.5e-4, float32).
    y = speechlike(1.3, 16000, seed=5)
    extractor = build_extractor(FeatureConfig(name="mfcc", num_mel_bins=40, deltas=False))
    ours = extractor(torch.from_numpy(y)).numpy()
    reference = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40).T
    assert ours.shape == reference.shape
    assert extractor.num_frames(y.size) == reference.shape[0]
    np.testing.assert_allclose(ours, reference, atol=1e-3, rtol=0)


def test_mfcc_deltas_match_librosa():
    # Deltas are the regression over +-2 frames with the edge frames repeated (Kaldi / fairseq / torchaudio's
    # compute_deltas); librosa's Savitzky-Golay derivative of width 5, order 1 with mode="nearest" is the same
    # filter. Delta-deltas are deltas of the deltas.
    y = speechlike(0.8, 16000, seed=1)
    extractor = build_extractor(FeatureConfig(name="mfcc", num_mel_bins=40, deltas=True))
    frames = extractor(torch.from_numpy(y)).numpy()
    assert frames.shape[1] == 39
    static = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40)
    delta = librosa.feature.delta(static, width=5, order=1, mode="nearest")
    delta2 = librosa.feature.delta(delta, width=5, order=1, mode="nearest")
    np.testing.assert_allclose(frames[:, :13], static.T, atol=1e-3, rtol=0)
    np.testing.assert_allclose(frames[:, 13:26], delta.T, atol=1e-3, rtol=0)
    np.testing.assert_allclose(frames[:, 26:], delta2.T, atol=1e-3, rtol=0)
    assert np.abs(frames[:, 13:26]).max() > 1.0  # the deltas are not trivially zero


def test_fbank_is_kaldi_fbank_with_utterance_cmvn():
    samples = torch.from_numpy(speechlike(1.0, 16000, seed=2))
    config = FeatureConfig(name="fbank", num_mel_bins=80, deltas=False, normalize="utterance")
    frames = build_extractor(config)(samples)
    raw = in_float64(torchaudio.compliance.kaldi.fbank, samples, num_mel_bins=80)
    assert frames.shape == raw.shape == (98, 80)
    torch.testing.assert_close(frames.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    torch.testing.assert_close(frames.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)
    expected = (raw - raw.mean(0)) / (raw.std(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(frames, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mfcc_hubert", "fbank"])
def test_utterance_l2_is_cmvn_then_each_frame_on_the_sphere(name):
    """features.normalize=utterance_l2: per-file CMVN, then every frame scaled to length sqrt(dim) keeping its
    direction (k-means then clusters by angle), the same batched as alone; an all-zero frame stays zero, not NaN."""
    from speechvq.features.base import normalize_utterance, on_sphere

    waves = [torch.from_numpy(speechlike(seconds, 16000, seed)) for seed, seconds in enumerate((1.3, 0.4))]
    plain = build_extractor(FeatureConfig(name=name, normalize="utterance"))
    sphere = build_extractor(FeatureConfig(name=name, normalize="utterance_l2"))
    for frames, cmvn, wave in zip(sphere.extract_batch(waves), plain.extract_batch(waves), waves):
        lengths = frames.norm(dim=1)
        torch.testing.assert_close(lengths, torch.full_like(lengths, sphere.dim**0.5), atol=1e-4, rtol=0)
        cosine = torch.nn.functional.cosine_similarity(frames, cmvn, dim=1)
        torch.testing.assert_close(cosine, torch.ones_like(cosine), atol=1e-5, rtol=0)
        torch.testing.assert_close(sphere(wave), frames, atol=1e-4, rtol=0)
    raw = build_extractor(FeatureConfig(name=name))(waves[0])
    torch.testing.assert_close(sphere(waves[0]), on_sphere(normalize_utterance(raw)), atol=1e-4, rtol=0)
    zero_frame = on_sphere(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    torch.testing.assert_close(zero_frame, torch.tensor([[0.0, 0.0], [0.6 * 2**0.5, 0.8 * 2**0.5]]))


@pytest.mark.parametrize("name", ["mfcc_hubert", "mfcc", "fbank"])
def test_shorter_than_one_frame_gives_zero_frames(name):
    extractor = build_extractor(FeatureConfig(name=name))
    frames = extractor(torch.zeros(100 if name != "mfcc" else 0))
    assert frames.shape == (0, extractor.dim)


@pytest.mark.parametrize("num_samples", [400, 401, 559, 560, 16000, 16001])
def test_num_frames_matches_output(num_samples):
    samples = torch.from_numpy(speechlike(num_samples / 16000 + 1e-9, 16000, seed=0))[:num_samples]
    for name in ("mfcc_hubert", "mfcc", "fbank"):
        extractor = build_extractor(FeatureConfig(name=name))
        assert extractor(samples).shape[0] == extractor.num_frames(num_samples)


def test_unknown_feature_name_is_named_error():
    with pytest.raises(ConfigError, match="features.name"):
        build_extractor(FeatureConfig(name="mfc"))


@pytest.mark.parametrize("name", ["mfcc_hubert", "fbank"])
def test_batched_extraction_equals_the_per_utterance_recipe(name):
    # Lengths from below one frame to 6 s, in one padded batch: each item must equal its own recipe output.
    g = torch.Generator().manual_seed(0)
    lengths = [100, 399, 400, 401, 559, 4000, 16000, 96000] + torch.randint(400, 40000, (8,), generator=g).tolist()
    waves = [torch.from_numpy(speechlike(n / 16000 + 1e-6, 16000, seed=i))[:n] for i, n in enumerate(lengths)]
    config = FeatureConfig(name=name, num_mel_bins=23 if name == "mfcc_hubert" else 80)
    extractor = build_extractor(config)
    for wave, frames in zip(waves, extractor.extract_batch(waves)):
        if name == "mfcc_hubert":
            reference = fairseq_mfcc(wave, 16000) if wave.numel() >= 400 else torch.zeros(0, 39)
        else:
            reference = (
                in_float64(torchaudio.compliance.kaldi.fbank, wave, num_mel_bins=80)
                if wave.numel() >= 400
                else torch.zeros(0, 80)
            )
        assert frames.shape == reference.shape
        torch.testing.assert_close(frames, reference, atol=FLOAT32_NOISE, rtol=0)


def test_long_files_are_processed_in_slices_with_the_same_result():
    """A long file's statics are computed in slices (bounded memory); the result equals one pass."""
    wave = torch.from_numpy(speechlike(20.0, 16000, seed=4))
    extractor = build_extractor(FeatureConfig())
    whole = extractor(wave)
    extractor.max_frames_per_pass = 333  # slices of 333 frames, boundaries inside the utterance
    sliced = extractor.extract_batch([wave[:8000], wave])
    torch.testing.assert_close(sliced[1], whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(sliced[0], extractor(wave[:8000]), atol=1e-5, rtol=0)
    torch.testing.assert_close(whole, fairseq_mfcc(wave, 16000), atol=FLOAT32_NOISE, rtol=0)


def test_cpu_passes_follow_the_l2_cache_linux_reports():
    """One frame per KiB of L2 per thread, at most 1,024: the size read from sysfs equals what glibc's getconf
    reads from the CPU (a unit parsed wrongly, '512K' as 512, would give 0-frame passes)."""
    import shutil
    import subprocess

    from speechvq.features.mfcc import _l2_cache_bytes

    getconf = shutil.which("getconf")
    if getconf is None:
        pytest.skip("no getconf on this machine")
    reported = subprocess.run([getconf, "LEVEL2_CACHE_SIZE"], capture_output=True, text=True).stdout.strip()
    if not reported.isdigit() or int(reported) == 0:
        pytest.skip(f"getconf reports no L2 size here ({reported!r})")
    assert _l2_cache_bytes() == int(reported)
    extractor = build_extractor(FeatureConfig())
    per_thread = extractor._frames_per_pass(torch.device("cpu")) // torch.get_num_threads()
    assert per_thread == min(1024, int(reported) // 1024)


CAPABILITY_SCRIPT = """
import sys, numpy, torch
sys.path.insert(0, sys.argv[2])
from test_features import capability_features
numpy.savez(sys.argv[1], **capability_features())
print(torch.backends.cpu.get_cpu_capability())
"""


def capability_features() -> dict:
    """Both Kaldi families' features of a few utterances, as numpy arrays by family name."""
    waves = [torch.from_numpy(speechlike(0.7 + 0.4 * i, 16000, seed=i)) for i in range(4)]
    return {
        name: torch.cat(build_extractor(FeatureConfig(name=name)).extract_batch(waves)).numpy()
        for name in ("mfcc_hubert", "fbank")
    }


def test_features_do_not_depend_on_the_cpus_kernels(tmp_path):
    """The same bits with ATen's generic kernels (in a child process) as with the ones this CPU picks (AVX2 or
    AVX-512, here): torchaudio's float32 Povey window, made by the CPU's own pow kernel, differed between the two, and
    so did every codebook trained on its features. A stand-in for running on another CPU, which the test cannot do."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU runs ATen's generic kernels already: there is no other kernel set to compare with")
    out = tmp_path / "generic.npz"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run([sys.executable, "-c", CAPABILITY_SCRIPT, str(out), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() != torch.backends.cpu.get_cpu_capability(), "both runs used the same kernels"
    generic, here = np.load(out), capability_features()
    for name, frames in here.items():
        assert frames.shape[0] > 300 and frames.tobytes() == generic[name].tobytes(), name


@pytest.mark.parametrize("window,hop", [(400, 160), (200, 80), (400, 400), (551, 220)])
def test_frame_means_are_the_float64_means_rounded(window, hop):
    """Each frame's mean, summed in float64 (from shared blocks for an unfold view) and rounded once: the same as
    a float64 mean of the frame, whatever slice of the signal's frames is asked for."""
    from speechvq.features.kaldi_batched import frame_means

    signal = torch.randn(40_000, generator=torch.Generator().manual_seed(window)) * 1e-3 + 0.01
    frames = signal.unfold(0, window, hop)
    for part in (frames, frames[7:50], frames[3:4], frames[10:60].contiguous()):
        expected = part.double().mean(dim=1, keepdim=True).float()
        assert frame_means(part).numpy().tobytes() == expected.numpy().tobytes()
