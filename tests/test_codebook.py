import json
import pickle

import pytest
import torch

from speechvq.codebook import Codebook, load_codebook
from speechvq.config import FeatureConfig
from speechvq.errors import CodebookFileError, CodebookMismatchError


def make_codebook(normalized=False) -> Codebook:
    g = torch.Generator().manual_seed(0)
    return Codebook(
        centroids=torch.randn(10, 39, generator=g),
        feature_config=FeatureConfig().to_dict(),
        frame_rate_hz=100.0,
        feature_mean=torch.randn(39, generator=g) if normalized else None,
        feature_std=torch.rand(39, generator=g) + 0.5 if normalized else None,
        training={"inertia": 1.5, "num_train_frames": 1000},
    )


@pytest.mark.parametrize("normalized", [False, True])
def test_round_trip(tmp_path, normalized):
    codebook = make_codebook(normalized)
    path = codebook.save(tmp_path / "codebook.safetensors")
    loaded = load_codebook(path)
    assert torch.equal(loaded.centroids, codebook.centroids)
    assert loaded.fingerprint == codebook.fingerprint
    assert loaded.feature_config == codebook.feature_config and loaded.training == codebook.training
    if normalized:
        assert torch.equal(loaded.feature_mean, codebook.feature_mean)
    sidecar = json.loads((tmp_path / "codebook.json").read_text())
    assert sidecar["fingerprint"] == codebook.fingerprint and sidecar["codebook_size"] == 10 and sidecar["dim"] == 39
    assert load_codebook(tmp_path).fingerprint == codebook.fingerprint  # a run folder works too


def test_fingerprint_depends_on_content():
    a, b = make_codebook(), make_codebook()
    assert a.fingerprint == b.fingerprint
    changed = Codebook(a.centroids + 1e-3, a.feature_config, 100.0)
    other_features = Codebook(a.centroids, {**a.feature_config, "num_mel_bins": 40}, 100.0)
    assert len({a.fingerprint, changed.fingerprint, other_features.fingerprint}) == 3
    # the global normalization decides the units too, and the training summary does not
    n = make_codebook(normalized=True)
    shifted = Codebook(n.centroids, n.feature_config, 100.0, n.feature_mean + 1e-3, n.feature_std)
    scaled = Codebook(n.centroids, n.feature_config, 100.0, n.feature_mean, n.feature_std * 2)
    retrained = Codebook(n.centroids, n.feature_config, 100.0, n.feature_mean, n.feature_std, {"inertia": 9.0})
    assert len({a.fingerprint, n.fingerprint, shifted.fingerprint, scaled.fingerprint}) == 4
    assert retrained.fingerprint == n.fingerprint


def test_mismatch_errors_name_the_difference():
    codebook = make_codebook()
    with pytest.raises(CodebookMismatchError, match="dimension"):
        codebook.check_compatible(codebook.feature_config, 40)
    with pytest.raises(CodebookMismatchError, match="num_mel_bins"):
        codebook.check_compatible({**codebook.feature_config, "num_mel_bins": 40}, 39)


def test_missing_truncated_and_pickled_files_are_clear_errors(tmp_path):
    with pytest.raises(CodebookFileError, match="does not exist"):
        load_codebook(tmp_path / "nope.safetensors")
    path = make_codebook().save(tmp_path / "codebook.safetensors")
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CodebookFileError):
        load_codebook(tmp_path / "truncated.safetensors")
    # A pickle never gets unpickled: it is simply not a safetensors file.
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"centroids": torch.zeros(2, 2)}))
    with pytest.raises(CodebookFileError):
        load_codebook(tmp_path / "evil.safetensors")


def test_tampered_centroids_fail_the_fingerprint(tmp_path):
    path = make_codebook().save(tmp_path / "codebook.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last centroid value
    path.write_bytes(bytes(data))
    with pytest.raises(CodebookFileError, match="fingerprint"):
        load_codebook(path)
