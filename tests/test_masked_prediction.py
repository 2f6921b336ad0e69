"""HuBERT-style masked prediction: masking, the 100 -> 50 Hz target mapping, the loss by hand, resume and the
iterations (layer features alone or batched: test_contrastive.py, for both prediction objectives)."""

import dataclasses
import json
import math

import pytest
import torch
from conftest import speechlike
from safetensors.torch import load_file

from speechvq import job, pipeline
from speechvq.config import CodebookConfig, DataConfig, FeatureConfig, ObjectiveConfig, RunConfig, TrainEncoderConfig
from speechvq.encoder import batches
from speechvq.encoder.batches import narrowband, span_mask, span_starts, targets_at_rate
from speechvq.encoder.checkpoint import load_encoder
from speechvq.encoder.hubert import MaskedPredictionModel, masked_prediction_loss
from speechvq.errors import ConfigError


def test_span_mask_is_a_function_of_the_seed_and_masks_whole_spans():
    a = span_mask(500, 0.08, 10, torch.Generator().manual_seed(3))
    b = span_mask(500, 0.08, 10, torch.Generator().manual_seed(3))
    c = span_mask(500, 0.08, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Every run of masked frames is at least one span long (spans may overlap into longer runs).
    edges = torch.diff(torch.cat([torch.tensor([0]), a.int(), torch.tensor([0])]))
    runs = (edges == -1).nonzero().squeeze(1) - (edges == 1).nonzero().squeeze(1)
    assert runs.numel() > 0 and int(runs.min()) >= 10
    # HuBERT's p = 0.08, l = 10 masks about half the frames (1 - (1 - p)^l = 0.57 before edge effects).
    share = (
        sum(float(span_mask(500, 0.08, 10, torch.Generator().manual_seed(s)).float().mean()) for s in range(50)) / 50
    )
    assert 0.45 < share < 0.62
    assert not span_mask(5, 0.5, 10, torch.Generator()).any()  # shorter than a span: nothing to mask


def test_span_starts_average_p_times_frames_and_fit():
    draws = [span_starts(500, 0.08, 10, torch.Generator().manual_seed(s)) for s in range(200)]
    assert 39.0 < sum(d.numel() for d in draws) / len(draws) < 41.0  # E = 0.08 x 500 = 40
    for d in draws:
        assert d.unique().numel() == d.numel() and int(d.max()) <= 490 and int(d.min()) >= 0


def test_targets_follow_hubert_label_rate_mapping():
    labels = torch.arange(10)
    assert targets_at_rate(labels, 100.0, 50.0, 5).tolist() == [0, 2, 4, 6, 8]  # every other 100 Hz label
    assert targets_at_rate(labels, 100.0, 50.0, 7).tolist() == [0, 2, 4, 6, 8]  # frames past the labels dropped
    assert targets_at_rate(labels, 50.0, 50.0, 3).tolist() == [0, 1, 2]
    assert targets_at_rate(torch.arange(4), 25.0, 50.0, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_loss_is_cross_entropy_on_masked_frames_only():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    targets = torch.tensor([[0, 2, 2, 1]])
    mask = torch.tensor([[True, True, False, False]])
    valid = torch.tensor([[True, True, True, False]])

    def ce(row, target):
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    expected = (ce([2.0, 0.0, 0.0], 0) + ce([0.0, 1.0, 0.0], 2)) / 2
    out = masked_prediction_loss(logits, targets, mask, valid)
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    assert out.num_masked == 2 and out.masked_accuracy == 0.5  # frame 0 right, frame 1 wrong
    changed = logits.clone()
    changed[0, 2] = torch.tensor([9.0, -9.0, 0.0])  # an unmasked frame: no effect on the loss
    assert float(masked_prediction_loss(changed, targets, mask, valid).loss) == pytest.approx(expected, rel=1e-6)
    with_unmasked = masked_prediction_loss(logits, targets, mask, valid, unmasked_weight=0.5)
    assert float(with_unmasked.loss) == pytest.approx(expected + 0.5 * ce([0.0, 0.0, 3.0], 2), rel=1e-6)


def tiny_model():
    torch.manual_seed(0)
    return MaskedPredictionModel(dim=32, layers=2, heads=4, num_units=7, proj_dim=16).eval()


def test_a_few_steps_learn_planted_targets():
    """Targets that are a function of the audio (loud vs quiet halves) are learnable: the loss falls."""
    model = tiny_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    waves = [torch.from_numpy(speechlike(1.0, 16000, i)) for i in range(4)]
    for wave in waves:
        wave[8000:] *= 0.01
    frames = model.num_frames(16000)
    targets = torch.tensor([[0] * (frames // 2) + [1] * (frames - frames // 2)] * 4)
    losses = []
    for step in range(40):
        mask = torch.stack([span_mask(frames, 0.06, 5, torch.Generator().manual_seed(step * 4 + i)) for i in range(4)])
        out = model(waves, targets, mask)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_narrowband_crops_lose_the_band_above_4_khz_and_keep_their_length():
    t = torch.arange(16001, dtype=torch.float64).float() / 16000  # an odd length: the round trip must keep it
    low, high = torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 6000 * t)
    (narrow,) = narrowband([low + high], 1.0, 16000, torch.Generator().manual_seed(0))
    assert narrow.shape == low.shape
    spectrum = torch.fft.rfft(narrow[:16000]).abs()  # 1 Hz bins
    assert spectrum[6000] < 1e-3 * spectrum[440]
    assert torch.allclose(narrow[500:-500], low[500:-500], atol=0.01)  # the band below 4 kHz passes as it was
    # A share of the crops, chosen by the generator: the same seed picks the same ones; share 0 draws nothing.
    crops = [low + high] * 200
    picked = [not torch.equal(c, crops[0]) for c in narrowband(crops, 0.25, 16000, torch.Generator().manual_seed(3))]
    again = [not torch.equal(c, crops[0]) for c in narrowband(crops, 0.25, 16000, torch.Generator().manual_seed(3))]
    assert picked == again and 30 <= sum(picked) <= 70
    untouched, fresh = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert narrowband(crops, 0.0, 16000, untouched) is crops
    assert torch.equal(torch.rand(3, generator=untouched), torch.rand(3, generator=fresh))


def band_limited_calls(monkeypatch) -> list[int]:
    """Stands in for the resampling round trip and counts the crops it is given."""
    calls = []

    def fake(crop, sample_rate, band_rate):
        calls.append(crop.numel())
        return torch.zeros_like(crop)

    monkeypatch.setattr(batches, "_band_limited", fake)
    return calls


def test_masked_prediction_training_band_limits_its_share_of_crops(monkeypatch):
    calls = band_limited_calls(monkeypatch)
    model, waves = tiny_model(), [torch.from_numpy(speechlike(1.0, 16000, i)) for i in range(3)]
    labels = [torch.zeros(model.num_frames(16000), dtype=torch.long) for _ in waves]
    config = TrainEncoderConfig(objective=ObjectiveConfig(name="masked_prediction"), narrowband_share=1.0)
    model.training_loss(waves, labels, 16000, config, 0, torch.Generator(), None, torch.device("cpu"))
    assert calls == [16000] * 3


def hubert_config(dataset, targets, steps=6) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
        features=FeatureConfig(name="encoder", layer=1),
        codebook=CodebookConfig(codebook_size=6, n_init=1, max_iter=10),
        train_encoder=TrainEncoderConfig(
            objective=ObjectiveConfig(
                name="masked_prediction", targets=str(targets), dim=16, layers=2, heads=2, proj_dim=8
            ),
            steps=steps,
            batch_size=2,
            segment_s=0.5,
            checkpoint_every=3,
            validate_every=3,
        ),
        stages=["train_encoder", "features", "train", "quantize", "evaluate"],
        device="cpu",
    )


def mfcc_run(dataset, folder):
    config = RunConfig(
        data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
        codebook=CodebookConfig(codebook_size=5, n_init=1, max_iter=10),
        stages=["features", "train", "quantize"],
        device="cpu",
    )
    pipeline.run(config, folder)
    return folder


def test_masked_prediction_run_trains_on_an_earlier_runs_units_and_writes_units(dataset, tmp_path):
    targets = mfcc_run(dataset, tmp_path / "mfcc")
    run_dir = tmp_path / "hubert"
    result = pipeline.run(hubert_config(dataset, targets), run_dir)
    model_meta = json.loads((run_dir / "encoder/model.json").read_text())
    assert model_meta["train_encoder"]["objective"]["name"] == "masked_prediction" and model_meta["num_units"] == 5
    assert "masked_accuracy" in model_meta["final"]
    assert result.metrics["num_utterances"] == 6 and result.metrics["codebook_size"] == 6
    records = [json.loads(line) for line in (run_dir / "units.jsonl").read_text().splitlines()]
    assert all(r["frame_rate_hz"] == 50.0 for r in records)
    model, _ = load_encoder(run_dir)
    assert model.feature_dim == 16 and len(model.layers.layers) == 2
    with pytest.raises(ConfigError, match="no\\s+quantizer"):  # no codebook of its own: k-means on its features
        pipeline.run(dataclasses.replace(hubert_config(dataset, targets), codebook=CodebookConfig(name="encoder"),
                                         stages=["quantize"]), run_dir)  # fmt: skip


class Interrupted(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_weights(dataset, tmp_path, monkeypatch):
    from speechvq.encoder import train as training

    targets = mfcc_run(dataset, tmp_path / "mfcc")
    config = dataclasses.replace(hubert_config(dataset, targets), stages=["train_encoder"])
    pipeline.run(config, tmp_path / "clean")
    original = training._save_checkpoint

    def interrupting(path, model, optimizer, step, *args):
        original(path, model, optimizer, step, *args)
        if step == 3:
            raise Interrupted

    monkeypatch.setattr(training, "_save_checkpoint", interrupting)
    with pytest.raises(Interrupted):
        pipeline.run(config, tmp_path / "killed")
    monkeypatch.setattr(training, "_save_checkpoint", original)
    pipeline.run(config, tmp_path / "killed")
    clean = load_file(str(tmp_path / "clean/encoder/model.safetensors"))
    resumed = load_file(str(tmp_path / "killed/encoder/model.safetensors"))
    assert clean.keys() == resumed.keys()
    for name in clean:
        assert torch.equal(clean[name], resumed[name]), name


def test_iterations_run_in_one_command_each_predicting_the_previous_units(dataset, tmp_path):
    from speechvq.config import IterationConfig

    config = dataclasses.replace(hubert_config(dataset, None, steps=3), iteration=IterationConfig(count=3))
    config.codebook = CodebookConfig(codebook_size=5, n_init=1, max_iter=10)
    with pytest.raises(ConfigError, match="iteration.count"):  # one pipeline run is one iteration
        pipeline.run(config, tmp_path / "refused")
    summary = job.run(config, tmp_path / "it")
    rows = json.loads((tmp_path / "it/iterations.json").read_text())
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    first_targets = tmp_path / "it/iteration1/targets"
    assert json.loads((first_targets / "codebook.json").read_text())["feature_config"]["name"] == "mfcc_hubert"
    for number in (2, 3):
        meta = json.loads((tmp_path / f"it/iteration{number}/targets/encoder/model.json").read_text())
        assert meta["train_encoder"]["objective"]["targets"] == str(tmp_path / f"it/iteration{number - 1}/targets")
        assert meta["num_units"] == 5
        units = tmp_path / f"it/iteration{number}/units"
        # the units on data.path come from this iteration's model and its k-means codebook
        stored = json.loads((units / "features/index.json").read_text())["feature_config"]
        assert stored["name"] == "encoder" and stored["layer"] == 1
        assert stored["model_fingerprint"] == meta["fingerprint"]
        codebook = json.loads((tmp_path / f"it/iteration{number}/targets/codebook.json").read_text())
        assert json.loads((units / "units.meta.json").read_text())["codebook_fingerprint"] == codebook["fingerprint"]
    assert summary.run_dir == tmp_path / "it/iteration3/units"
    assert rows[1]["train_encoder_s"] > 0 and rows[0]["train_encoder_s"] == 0
    # A rerun skips every finished stage and still reports each model's training time (once it reported 0).
    job.run(config, tmp_path / "it")
    again = json.loads((tmp_path / "it/iterations.json").read_text())
    assert [r["train_encoder_s"] for r in again] == [r["train_encoder_s"] for r in rows]


@pytest.fixture
def saved_model(tmp_path):
    """A 2-layer, 32-d masked-prediction model saved as a features=encoder checkpoint: (model, path)."""
    from speechvq.encoder.train import config_record, save_model

    train = TrainEncoderConfig(objective=ObjectiveConfig(name="masked_prediction", dim=32, layers=2, heads=4))
    torch.manual_seed(0)
    model = MaskedPredictionModel.from_config(train, 16000, 7).eval()
    save_model(tmp_path / "model.safetensors", model, {**config_record(train, 16000), "num_units": 7}, 0, [])
    return model, str(tmp_path / "model.safetensors")


def test_long_files_go_through_the_encoder_in_chunks_on_the_file_grid(saved_model):
    """features=encoder with chunk_s=1: frames [50k, 50k + 50) of a 3.3 s file come from the model run on samples
    [16000 (k - 1), 16000 (k + 2)) (1 s of context each side, clipped to the file), so attention never spans more
    than 3 s; a short file batched with it is unaffected. A stitching offset, a lost context or a missing last
    chunk all show."""
    from speechvq.features import build_extractor

    model, path = saved_model
    config = FeatureConfig(name="encoder", checkpoint=path, layer=2, chunk_s=1.0)
    extractor = build_extractor(config)
    long, short = torch.from_numpy(speechlike(3.3, 16000, 4)), torch.from_numpy(speechlike(0.6, 16000, 5))
    frames, short_frames = extractor.extract_batch([long, short])
    total = model.num_frames(long.numel())
    assert frames.shape == (total, 32)
    for k in range(4):
        start = max(0, 16000 * (k - 1))
        reference = model.layer_features([long[start : 16000 * (k + 2)]], 2)[0]
        first, last, offset = 50 * k, min(total, 50 * (k + 1)), start // 320
        torch.testing.assert_close(frames[first:last], reference[first - offset : last - offset], atol=1e-5, rtol=0)
    torch.testing.assert_close(short_frames, model.layer_features([short], 2)[0], atol=1e-5, rtol=0)
    # Context matters: near the end of the first chunk, a context-free 1 s window gives other frames.
    alone = model.layer_features([long[:16000]], 2)[0]
    assert not torch.allclose(frames[45], alone[45], atol=1e-3)


def test_utterance_normalization_is_over_the_whole_stitched_file(saved_model):
    """features.normalize=utterance on encoder frames: each file's stitched frames get zero mean and unit variance
    over the whole file, alone or batched (once, the option was accepted and silently ignored; normalizing each
    chunk on its own would also differ); utterance_l2 then puts those frames on the sphere."""
    from speechvq.features import build_extractor, normalize_utterance
    from speechvq.features.base import on_sphere

    waves = [torch.from_numpy(speechlike(seconds, 16000, seed)) for seed, seconds in enumerate((3.3, 0.6))]
    common = dict(name="encoder", checkpoint=saved_model[1], layer=2, chunk_s=1.0)
    raw = build_extractor(FeatureConfig(**common)).extract_batch(waves)
    normalized = build_extractor(FeatureConfig(**common, normalize="utterance"))
    for frames, wave, plain in zip(normalized.extract_batch(waves), waves, raw):
        torch.testing.assert_close(frames, normalize_utterance(plain), atol=1e-5, rtol=0)
        torch.testing.assert_close(frames.mean(0), torch.zeros(32), atol=1e-4, rtol=0)
        torch.testing.assert_close(normalized(wave), frames, atol=1e-4, rtol=0)
    on_the_sphere = build_extractor(FeatureConfig(**common, normalize="utterance_l2")).extract_batch(waves)
    for frames, plain in zip(on_the_sphere, raw):
        torch.testing.assert_close(frames, on_sphere(normalize_utterance(plain)), atol=1e-5, rtol=0)


def test_a_list_of_layers_gives_them_side_by_side_from_one_pass(saved_model, tmp_path):
    """features.layer=[0, 2] on a Transformer encoder: each file's frames are layer 0's and layer 2's concatenated
    (in that order), batched and chunked like one layer; CMVN over the concatenation equals CMVN of each part. The
    conv VQ-VAE (one output) and reductions other than concat are refused by name."""
    from speechvq.encoder.model import VQVAE
    from speechvq.encoder.train import config_record, save_model
    from speechvq.features import build_extractor

    path = saved_model[1]
    waves = [torch.from_numpy(speechlike(seconds, 16000, seed)) for seed, seconds in enumerate((2.7, 0.6))]
    for normalize in ("none", "utterance"):
        common = dict(name="encoder", checkpoint=path, chunk_s=1.0, normalize=normalize)
        parts = [build_extractor(FeatureConfig(**common, layer=layer)).extract_batch(waves) for layer in (2, 0)]
        both = build_extractor(FeatureConfig(**common, layer=[2, 0]))
        assert both.dim == 64
        for frames, first, second in zip(both.extract_batch(waves), *parts):
            torch.testing.assert_close(frames, torch.cat([first, second], dim=1), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="features.layer_reduction"):
        build_extractor(FeatureConfig(name="encoder", checkpoint=path, layer=[0, 1], layer_reduction="mean"))
    with pytest.raises(ConfigError, match="features.layer"):
        build_extractor(FeatureConfig(name="encoder", checkpoint=path, layer=[0, 3]))
    vqvae = TrainEncoderConfig()
    save_model(tmp_path / "vqvae.safetensors", VQVAE.from_config(vqvae, 16000), config_record(vqvae, 16000), 0, [])
    with pytest.raises(ConfigError, match="one output"):
        build_extractor(FeatureConfig(name="encoder", checkpoint=str(tmp_path / "vqvae.safetensors"), layer=[0, 1]))
