"""wav2vec 2.0's contrastive objective: the logits and loss by hand, distractor sampling, determinism, features
the same alone or batched (both front ends), the model's own Gumbel codes as units, and SIGKILL then resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import speechlike
from safetensors.torch import load_file

from speechvq.audio import load_waveform
from speechvq.config import QuantizerConfig, TrainEncoderConfig
from speechvq.encoder.checkpoint import load_encoder
from speechvq.encoder.contrastive import ContrastiveModel, contrastive_logits, sample_distractors
from speechvq.encoder.hubert import MaskedPredictionModel
from speechvq.encoder.quantizers import GumbelVQ
from speechvq.encoder.train import learning_rate_at

REPO = Path(__file__).resolve().parents[1]


def test_logits_are_cosine_over_temperature_with_the_target_first_and_copies_left_out():
    context = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    distractors = torch.tensor(
        [
            [[0.0, 3.0], [-1.0, 0.0], [1.0, 0.0]],  # cos 0, cos -1, a copy of the target
            [[0.0, 2.0], [1.0, 0.0], [-1.0, -1.0]],  # cos 1, cos 0, cos -1/sqrt(2)
        ]
    )
    logits = contrastive_logits(context, targets, distractors, temperature=0.5)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[2.0, 0.0, -2.0, float("-inf")], [2 * r, 2.0, 0.0, -2 * r]])
    torch.testing.assert_close(logits, expected)
    # The loss is cross-entropy with the true target (column 0) as the class: the copy adds nothing.
    loss = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    by_hand = (
        -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
        - math.log(math.exp(2 * r) / (math.exp(2 * r) + math.exp(2) + 1 + math.exp(-2 * r)))
    ) / 2
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)


def test_distractors_come_from_the_other_masked_frames_of_the_utterance():
    picks = sample_distractors(7, 500, torch.Generator().manual_seed(0))
    assert picks.shape == (7, 500)
    for frame in range(7):
        assert set(picks[frame].tolist()) == set(range(7)) - {frame}  # never itself, every other one
    again = sample_distractors(7, 500, torch.Generator().manual_seed(0))
    assert torch.equal(picks, again)
    assert sample_distractors(1, 5, torch.Generator()).shape == (1, 0)  # one masked frame: nothing to contrast


def tiny(front_end="logmel", seed=0):
    torch.manual_seed(seed)
    quantizer = GumbelVQ(32, codebook_size=8, num_groups=2)
    return ContrastiveModel(dim=32, layers=2, heads=4, quantizer=quantizer, proj_dim=16, front_end=front_end)


def tiny_config(steps=10) -> TrainEncoderConfig:
    config = TrainEncoderConfig(steps=steps, quantizer=QuantizerConfig(name="gumbel", codebook_size=8, num_codebooks=2))
    config.objective.name, config.objective.num_negatives = "contrastive", 10
    config.objective.mask_prob, config.objective.mask_span = 0.1, 5
    config.objective.feature_penalty = 0.1
    return config


def test_contrastive_training_band_limits_its_share_of_crops(monkeypatch):
    from test_masked_prediction import band_limited_calls

    calls = band_limited_calls(monkeypatch)
    waves = [torch.from_numpy(speechlike(1.0, 16000, i)) for i in range(3)]
    config = tiny_config()
    config.narrowband_share = 1.0
    tiny().training_loss(waves, None, 16000, config, 0, torch.Generator(), torch.Generator(), torch.device("cpu"))
    assert calls == [16000] * 3


def test_the_loss_is_a_function_of_the_seed_and_counts_every_part():
    waves = [torch.from_numpy(speechlike(s, 16000, i)) for i, s in enumerate((1.2, 0.7, 2.0))]
    model, config = tiny().train(), tiny_config()

    def loss(seed, penalty=10.0):
        config.objective.feature_penalty = penalty
        generator, device_generator = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        return model.training_loss(waves, None, 16000, config, 0, generator, device_generator, torch.device("cpu"))

    (a, stats), (b, _), (c, _) = loss(1), loss(1), loss(2)
    assert float(a.detach()) == float(b.detach()) and float(a.detach()) != float(c.detach())
    assert 0.0 <= stats["contrastive_accuracy"] <= 1.0 and stats["perplexity"] > 1
    # The feature penalty is on the frames before the layer norm (after it, their mean square is always ~1).
    raw, valid = model.front_end_frames([w[:16000] for w in waves])
    without, _ = loss(1, penalty=0.0)
    assert float(a.detach()) - float(without.detach()) == pytest.approx(
        10 * float(raw.detach()[valid].pow(2).mean()), rel=0.05
    )


@pytest.mark.parametrize("objective", ["contrastive", "masked_prediction"])
@pytest.mark.parametrize("front_end", ["logmel", "waveform"])
def test_layer_features_are_the_same_alone_or_in_a_padded_batch(objective, front_end):
    torch.manual_seed(0)
    model = (
        tiny(front_end) if objective == "contrastive" else MaskedPredictionModel(32, 2, 4, 7, 16, front_end=front_end)
    )
    model.eval()
    waves = [torch.from_numpy(speechlike(s, 16000, i)) for i, s in enumerate((0.9, 0.31, 1.7))]
    for layer in (0, 1, 2):
        batch = model.layer_features(waves, layer)
        for wave, batched in zip(waves, batch):
            alone = model.layer_features([wave], layer)[0]
            assert alone.shape == batched.shape == (model.num_frames(wave.numel()), 32)
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert model.num_frames(16000) == 49  # 20 ms frames either way


def test_the_model_learns_to_pick_each_masked_frames_own_target():
    """One batch (crops, masks, distractors and Gumbel noise all from one seed) seen again and again: the share of
    masked frames whose own target scores highest climbs from chance (1 in 11) towards 1."""
    waves = [torch.from_numpy(speechlike(1.0, 16000, i)) for i in range(3)]
    model, config = tiny(), tiny_config(steps=40)
    config.quantizer.gumbel_temperature = [0.5, 0.5]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    accuracy = []
    for step in range(40):
        generator = torch.Generator().manual_seed(0)
        loss, stats = model.training_loss(waves, None, 16000, config, step, generator, generator, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy.append(stats["contrastive_accuracy"])
    assert np.mean(accuracy[:5]) < 0.2
    assert np.mean(accuracy[-5:]) > 0.6


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    config = TrainEncoderConfig(steps=110, learning_rate=1.0, warmup_steps=10, lr_schedule="cosine")
    assert learning_rate_at(config, 0) == pytest.approx(0.1) and learning_rate_at(config, 9) == pytest.approx(1.0)
    assert learning_rate_at(config, 60) == pytest.approx(0.5)  # half way through the decay
    assert learning_rate_at(config, 109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert learning_rate_at(TrainEncoderConfig(learning_rate=0.3), 1234) == 0.3  # constant, no warm-up


def command(corpus, run_dir, *extra):
    return [
        sys.executable, "-m", "speechvq.run", f"data.path={corpus}", "data.alignments=null", "data.num_workers=0",
        "experiment=contrastive_demo", "train_encoder.data_path=null", "train_encoder.steps=60",
        "train_encoder.batch_size=2", "train_encoder.segment_s=0.5", "train_encoder.warmup_steps=10",
        "train_encoder.checkpoint_every=10", "train_encoder.validate_every=40", "train_encoder.objective.dim=16",
        "train_encoder.objective.heads=2", "train_encoder.objective.layers=1", "train_encoder.objective.proj_dim=8",
        "train_encoder.objective.num_negatives=5", "codebook.codebook_size=4", "codebook.n_init=1",
        "device=cpu", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip


def test_killed_training_resumes_to_the_same_weights_and_its_codes_are_units(dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    stages = "stages=[train_encoder]"
    done = subprocess.run(command(dataset, clean, stages), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    process = subprocess.Popen(command(dataset, killed, stages), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    checkpoint = killed / "encoder/checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not checkpoint.exists():
        time.sleep(0.005)
    assert process.poll() is None, "training finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    step = json.loads(checkpoint.read_text())["step"]
    assert 0 < step < 60
    resumed = subprocess.run(command(dataset, killed, stages), cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and f"resuming from step {step}" in resumed.stderr, resumed.stderr[-3000:]
    a, b = load_file(str(clean / "encoder/model.safetensors")), load_file(str(killed / "encoder/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The model's own Gumbel codes (2 groups) read the front end: layer 0, and only layer 0.
    own = ["codebook=encoder", "features.normalize=none", "stages=[features,quantize]"]
    refused = subprocess.run(command(dataset, killed, *own, "features.layer=1"), cwd=REPO, env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode != 0 and "features.layer" in refused.stderr
    codes = subprocess.run(command(dataset, killed, *own, "features.layer=0", "output.overwrite=true"), cwd=REPO,
                           env=env, capture_output=True, text=True)  # fmt: skip
    assert codes.returncode == 0, codes.stderr[-3000:]
    model, _ = load_encoder(killed)
    records = [json.loads(line) for line in (killed / "units.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        wave = load_waveform(next(dataset.glob(record["id"] + ".*")), 16000)
        with torch.inference_mode():
            expected = model.quantizer.encode(model.front_end([wave])[0])[0]  # (frames, 2 groups)
        assert record["units"] == expected.T.tolist()
