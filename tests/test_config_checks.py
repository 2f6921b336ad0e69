"""Impossible settings are refused at start-up with the key named, before any work: nothing is written."""

import dataclasses

import pytest
import torch

from speechvq import pipeline
from speechvq.checks import check_config
from speechvq.config import CodebookConfig, DataConfig, RunConfig, TrainEncoderConfig
from speechvq.encoder.train import train_encoder_model
from speechvq.errors import ConfigError


def base(dataset) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=10),
        device="cpu",
    )


def with_value(config: RunConfig, key: str, value) -> RunConfig:
    *path, last = key.split(".")

    def replaced(node, parts):
        if not parts:
            return dataclasses.replace(node, **{last: value})
        return dataclasses.replace(node, **{parts[0]: replaced(getattr(node, parts[0]), parts[1:])})

    return replaced(config, path)


BAD = [
    ("quantize.chunk_size", -5),
    ("quantize.chunk_size", 0),
    ("codebook.chunk_size", 0),
    ("codebook.chunk_size", -5),
    ("quantize.precision", "half"),
    ("codebook.precision", "half"),
    ("codebook.precision", "Fast"),
    ("codebook.codebook_size", 0),
    ("codebook.codebook_size", -5),
    ("codebook.n_init", 0),
    ("codebook.max_iter", 0),
    ("codebook.name", "kmean"),
    ("train_encoder.steps", 0),
    ("train_encoder.batch_size", 0),
    ("train_encoder.quantizer.name", "vq"),
    ("train_encoder.quantizer.ema_decay", 1.0),
    ("evaluate.alignment_tolerance_frames", -1),
    ("evaluate.resynthesize", -2),
    ("data.on_error", "ignore"),
    ("data.num_workers", -1),
    ("data.num_shards", 0),
    ("data.shard_index", 4),
    ("data.batch_seconds", 0),
    ("data.part_mb", -1.0),
    ("features.normalize", "cmvn"),
    ("features.name", "mfc"),
    ("features.sample_rate", 0),
    ("features.num_ceps", 30),  # more cepstra than the 23 mel bins
    ("features.frame_shift_ms", 0.0),
    ("features.layer", -1),
    ("evaluate.word_probe", "(?P<label>\\d"),  # not a regular expression
    ("evaluate.word_probe", "(\\d)_([a-z]+)"),  # without the named groups speaker and label
    ("train_encoder.objective.num_negatives", 0),
]


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_impossible_value_is_refused_before_any_work(dataset, tmp_path, key, value):
    config = with_value(base(dataset), key, value)
    with pytest.raises(ConfigError) as caught:
        pipeline.run(config, tmp_path / "run")
    assert caught.value.key == key and caught.value.value == value
    assert not (tmp_path / "run").exists()  # refused before the run folder, let alone features, was made


@pytest.mark.parametrize("key", ["quantize.precision", "codebook.precision"])
def test_fast_precision_on_cpu_is_refused_with_a_reason(dataset, tmp_path, key):
    config = with_value(base(dataset), key, "fast")
    with pytest.raises(ConfigError, match="needs CUDA"):
        pipeline.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fast is refused on the CPU (tested above)")
def test_fast_precision_is_accepted_on_cuda(dataset):
    check_config(with_value(base(dataset), "quantize.precision", "fast"))


def test_defaults_and_boundary_values_pass(dataset):
    check_config(RunConfig())
    for key, value in [
        ("quantize.chunk_size", 1),
        ("quantize.chunk_size", None),
        ("data.num_workers", 0),
        ("evaluate.alignment_tolerance_frames", 0),
        ("codebook.tol", -1.0),
    ]:
        check_config(with_value(base(dataset), key, value))


@pytest.mark.parametrize("key", ["steps", "batch_size"])
def test_train_encoder_model_refuses_zero_steps_or_batch(tmp_path, key):
    waves = [torch.zeros(16000), torch.zeros(16000)]
    config = dataclasses.replace(TrainEncoderConfig(), **{key: 0})
    with pytest.raises(ConfigError, match=f"train_encoder.{key}"):
        train_encoder_model(config, waves, tmp_path / "encoder", torch.device("cpu"), seed=0)
    assert not (tmp_path / "encoder" / "model.safetensors").exists()  # no untrained model posing as trained
