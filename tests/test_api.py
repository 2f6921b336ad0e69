"""speechvq.load(run) for every unit kind the CLI makes: encode() of a file equals the run's units for it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import soundfile
import torch
from test_ssl_checkpoints import _hf_model

from speechvq import load, pipeline
from speechvq.config import (
    CodebookConfig,
    DataConfig,
    EncoderModelConfig,
    FeatureConfig,
    ObjectiveConfig,
    QuantizerConfig,
    RunConfig,
    TrainEncoderConfig,
)
from speechvq.errors import MissingArtifactError, SpeechVQError
from speechvq.reconstruct import reference_logmel

KMEANS = CodebookConfig(codebook_size=6, n_init=1, max_iter=10)
TINY_CONV = EncoderModelConfig(channels=8, code_dim=8, decoder_channels=8)
TINY_TRANSFORMER = {"dim": 16, "layers": 2, "heads": 2, "proj_dim": 8}


def _config(dataset, features=None, codebook=KMEANS, train_encoder=None) -> RunConfig:
    stages = ["features", "train", "quantize"] if codebook.name == "kmeans" else ["features", "quantize"]
    return RunConfig(
        data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
        features=features or FeatureConfig(),
        codebook=codebook,
        train_encoder=train_encoder or TrainEncoderConfig(),
        stages=(["train_encoder"] if train_encoder else []) + stages,
        device="cpu",
    )


def _reconstruction(quantizer: QuantizerConfig) -> TrainEncoderConfig:
    return TrainEncoderConfig(model=TINY_CONV, quantizer=quantizer, steps=4, batch_size=2, segment_s=0.3,
                              checkpoint_every=4, validate_every=4)  # fmt: skip


def _prediction(objective: str, targets=None) -> TrainEncoderConfig:
    quantizer = QuantizerConfig(name="gumbel", codebook_size=4, num_codebooks=2)
    return TrainEncoderConfig(
        objective=ObjectiveConfig(name=objective, targets=targets, num_negatives=5, **TINY_TRANSFORMER),
        quantizer=quantizer, steps=4, batch_size=2, segment_s=0.5, checkpoint_every=4, validate_every=4,
    )  # fmt: skip


def _run_units(run_dir: Path) -> dict[str, torch.Tensor]:
    """audio path -> the run's units, (num_frames,) or (num_frames, num_codebooks), from its .km streams."""
    lines = (run_dir / "train.tsv").read_text().splitlines()
    streams = sorted(run_dir.glob("train*.km"))
    per_stream = [stream.read_text().splitlines() for stream in streams]
    out = {}
    for row, line in enumerate(lines[1:]):
        units = torch.tensor([[int(u) for u in stream[row].split()] for stream in per_stream]).T
        out[str(Path(lines[0]) / line.split("\t")[0])] = units[:, 0] if len(streams) == 1 else units
    return out


def _check_encode_equals_run(run_dir: Path) -> None:
    encoder = load(run_dir)
    expected = _run_units(run_dir)
    audio = {path: soundfile.read(path, dtype="float32") for path in expected}
    for path, units in expected.items():
        assert torch.equal(encoder.encode(*audio[path]).cpu(), units), path
    rates = {rate for _, rate in audio.values()}
    for rate in rates:  # encode_batch takes one sample rate: batch the files of each rate together
        paths = [path for path, (_, r) in audio.items() if r == rate]
        batch = encoder.encode_batch([audio[path][0] for path in paths], rate)
        for path, units in zip(paths, batch):
            assert torch.equal(units.cpu(), expected[path]), path


def _learned(dataset, quantizer: str, size: int = 4, groups: int = 1) -> RunConfig:
    """The reconstruction VQ-VAE's own quantizer (codebook=encoder)."""
    config = _reconstruction(QuantizerConfig(name=quantizer, codebook_size=size, num_codebooks=groups))
    return _config(dataset, FeatureConfig(name="encoder"), CodebookConfig(name="encoder"), config)


KINDS = {
    "kmeans_mfcc_hubert": lambda d, tmp: _config(d),
    "kmeans_librosa_mfcc": lambda d, tmp: _config(d, FeatureConfig(name="mfcc")),
    "kmeans_fbank_global_norm": lambda d, tmp: _config(d, FeatureConfig(name="fbank", normalize="global")),
    "kmeans_ssl_two_layers": lambda d, tmp: _config(
        d, FeatureConfig(name="ssl", checkpoint=_hf_folder(tmp / "hf"), layer=[1, 3])
    ),
    "kmeans_ssl_layer_tokens": lambda d, tmp: _config(
        d, FeatureConfig(name="ssl", checkpoint=_hf_folder(tmp / "hf"), layer=[1, 3], layer_reduction="tokens")
    ),
    "vq_ema": lambda d, tmp: _learned(d, "vq_ema", 8),
    "residual": lambda d, tmp: _learned(d, "residual", 4, 2),
    "product": lambda d, tmp: _learned(d, "product", 4, 2),
    "gumbel": lambda d, tmp: _learned(d, "gumbel", 4, 2),
    "contrastive_gumbel": lambda d, tmp: _config(
        d, FeatureConfig(name="encoder", layer=0), CodebookConfig(name="encoder"), _prediction("contrastive")
    ),
    "kmeans_masked_prediction_layer": lambda d, tmp: _config(
        d, FeatureConfig(name="encoder", layer=1), KMEANS, _prediction("masked_prediction", _mfcc_targets(d, tmp))
    ),
}


def _hf_folder(folder: Path) -> str:
    _hf_model("hubert", folder)
    return str(folder)


def _mfcc_targets(dataset, tmp) -> str:
    pipeline.run(_config(dataset), tmp / "targets")
    return str(tmp / "targets")


@pytest.mark.parametrize("kind", list(KINDS))
def test_load_encode_equals_the_runs_units(kind, dataset, tmp_path):
    run_dir = tmp_path / "run"
    pipeline.run(KINDS[kind](dataset, tmp_path), run_dir)
    _check_encode_equals_run(run_dir)


def test_kmeans_on_a_trained_encoders_features(dataset, tmp_path):
    """A second run: k-means over the frames of the first run's VQ-VAE encoder."""
    pipeline.run(KINDS["vq_ema"](dataset, tmp_path), tmp_path / "vqvae")
    features = FeatureConfig(name="encoder", checkpoint=str(tmp_path / "vqvae"))
    pipeline.run(_config(dataset, features), tmp_path / "run")
    _check_encode_equals_run(tmp_path / "run")
    assert load(tmp_path / "run").num_codebooks == 1


def test_decode_is_the_log_mel_the_units_stand_for(dataset, tmp_path):
    """decode(encode(x)) is close to x's own log-mel, closer than the same units shuffled; families without an
    inversion get a named error."""
    config = dataclasses.replace(_config(dataset), codebook=dataclasses.replace(KMEANS, codebook_size=32))
    pipeline.run(config, tmp_path / "run")
    encoder = load(tmp_path / "run")
    audio, rate = soundfile.read(str(dataset / "b/utt0.wav"), dtype="float32")
    units = encoder.encode(audio, rate)
    reference = reference_logmel(torch.from_numpy(audio), rate)
    rebuilt = encoder.decode(units)
    shuffled = encoder.decode(units[torch.randperm(units.numel(), generator=torch.Generator().manual_seed(0))])
    frames = min(reference.shape[0], rebuilt.shape[0])
    assert rebuilt.shape[1] == 80 and abs(rebuilt.shape[0] - reference.shape[0]) <= 2
    error = (rebuilt[:frames] - reference[:frames]).square().mean()
    assert error < 0.7 * (shuffled[:frames] - reference[:frames]).square().mean()
    ssl = tmp_path / "ssl"
    pipeline.run(KINDS["kmeans_ssl_two_layers"](dataset, tmp_path), ssl)
    with pytest.raises(SpeechVQError, match="features=ssl have no decoder"):
        load(ssl).decode(torch.zeros(5, dtype=torch.long))


def test_a_folder_without_a_codebook_is_a_named_error(tmp_path):
    with pytest.raises(MissingArtifactError, match="codebook.safetensors"):
        load(tmp_path)


def test_layer_tokens_are_each_layers_own_kmeans(dataset, tmp_path):
    """features.layer=[1,3] with layer_reduction=tokens: stream 0 and stream 1 are exactly the units of single-layer
    runs on layer 1 and on layer 3 (same seed, same K); the JSONL gives each stream's offset in a joint vocabulary."""
    checkpoint = _hf_folder(tmp_path / "hf")
    runs = {}
    for name, layer, reduction in (("tokens", [1, 3], "tokens"), ("one", 1, "concat"), ("three", 3, "concat")):
        features = FeatureConfig(name="ssl", checkpoint=checkpoint, layer=layer, layer_reduction=reduction)
        pipeline.run(_config(dataset, features), tmp_path / name)
        runs[name] = tmp_path / name
    assert (runs["tokens"] / "train.q0.km").read_text() == (runs["one"] / "train.km").read_text()
    assert (runs["tokens"] / "train.q1.km").read_text() == (runs["three"] / "train.km").read_text()
    record = json.loads((runs["tokens"] / "units.jsonl").read_text().splitlines()[0])
    assert record["unit_offsets"] == [0, KMEANS.codebook_size] and len(record["units"]) == 2
    assert load(runs["tokens"]).num_codebooks == 2
