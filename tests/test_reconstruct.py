import math

import pytest
import torch
from conftest import speechlike
from torchaudio.compliance import kaldi

from speechvq.reconstruct import (
    _kaldi_banks,
    _kaldi_mfcc_to_logmel,
    _remap_bins,
    build_inversion,
    griffin_lim,
    logmel_distances,
    mel_cepstral_distortion,
    reference_logmel,
)


def test_full_mfcc_inverts_to_kaldi_log_fbank():
    wave = torch.from_numpy(speechlike(0.5, 16000, 0)).view(1, -1)
    mfcc = kaldi.mfcc(wave, num_ceps=23, num_mel_bins=23, use_energy=False)
    fbank = kaldi.fbank(wave, num_mel_bins=23)
    torch.testing.assert_close(_kaldi_mfcc_to_logmel(mfcc, 23), fbank, atol=1e-3, rtol=1e-4)


def test_remapping_between_filterbanks_on_a_smooth_spectrum():
    # Energies of a smooth power spectrum through the 23- and 80-filter Kaldi banks: remapping the 23 must
    # give the 80 up to interpolation error.
    spectrum = torch.exp(0.8 * torch.sin(torch.arange(256) / 45.0)).unsqueeze(1)  # (256 FFT bins, 1)
    coarse = (_kaldi_banks(23, 16000)[0] @ spectrum).log().T
    fine = (_kaldi_banks(80, 16000)[0] @ spectrum).log().T
    error = (_remap_bins(coarse, 23, 16000) - fine).abs()
    assert float(error.mean()) < 0.05 and float(error.max()) < 0.3
    torch.testing.assert_close(_remap_bins(fine, 80, 16000), fine)


def test_mfcc_reconstruction_is_close_to_the_reference():
    wave = torch.from_numpy(speechlike(1.0, 16000, 1))
    config = {"name": "mfcc_hubert", "sample_rate": 16000, "num_ceps": 13, "num_mel_bins": 23}
    frames = kaldi.mfcc(wave.view(1, -1), use_energy=False)
    rebuilt = build_inversion(config).logmel(frames)
    reference = reference_logmel(wave)
    assert rebuilt.shape == reference.shape
    assert logmel_distances(reference, rebuilt)["l1_sum"] / reference.numel() < 1.5


def test_distances_by_hand():
    ref = torch.zeros(2, 3)
    est = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]])  # extra frame ignored
    d = logmel_distances(ref, est)
    assert d["elements"] == 6 and d["l1_sum"] == 4.0 and d["l2_sum"] == 6.0
    mag = (est[:2] / 2).exp()
    assert d["sc_num"] == pytest.approx(float((1 - mag).square().sum())) and d["sc_den"] == 6.0


def test_mcd_zero_and_by_hand():
    c = torch.randn(5, 13)
    assert mel_cepstral_distortion(c, c, 23).abs().max() == 0
    shifted = c.clone()
    shifted[:, 1] += 1.0  # only c1 differs, by 1 Kaldi unit
    lifter_1 = 1 + 11 * math.sin(math.pi / 22)
    expected = (10 / math.log(10)) * math.sqrt(2) / (lifter_1 * math.sqrt(46))
    torch.testing.assert_close(mel_cepstral_distortion(c, shifted, 23), torch.full((5,), expected, dtype=torch.float64))
    shifted[:, 0] += 5.0  # c0 (level) is excluded
    torch.testing.assert_close(mel_cepstral_distortion(c, shifted, 23), torch.full((5,), expected, dtype=torch.float64))


def test_griffin_lim_gives_audio_of_the_right_length():
    wave = torch.from_numpy(speechlike(0.8, 16000, 2))
    audio = griffin_lim(reference_logmel(wave), iterations=8)
    assert abs(audio.numel() - wave.numel()) < 800 and float(audio.abs().max()) == pytest.approx(0.9)


def test_no_reconstruction_where_undefined():
    assert build_inversion({"name": "mfcc", "sample_rate": 16000}) is None
    assert build_inversion({"name": "ssl", "sample_rate": 16000}) is None
