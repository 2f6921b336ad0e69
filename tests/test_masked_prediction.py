"""HuBERT-style masked prediction: masking, the 100 -> 50 Hz target mapping, the loss by hand, and layer
features that are the same alone or in a padded batch."""

import math

import pytest
import torch
from conftest import speechlike

from speechvq.encoder.hubert import MaskedPredictionModel, masked_prediction_loss
from speechvq.encoder.masking import span_mask, targets_at_rate


def test_span_mask_is_a_function_of_the_seed_and_masks_whole_spans():
    a = span_mask(500, 0.08, 10, torch.Generator().manual_seed(3))
    b = span_mask(500, 0.08, 10, torch.Generator().manual_seed(3))
    c = span_mask(500, 0.08, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Every run of masked frames is at least one span long (spans may overlap into longer runs).
    edges = torch.diff(torch.cat([torch.tensor([0]), a.int(), torch.tensor([0])]))
    runs = (edges == -1).nonzero().squeeze(1) - (edges == 1).nonzero().squeeze(1)
    assert runs.numel() > 0 and int(runs.min()) >= 10
    # Over many draws, the number of spans averages mask_prob * frames / span (= 4 here).
    starts = [int((torch.diff(span_mask(500, 0.08, 10, torch.Generator().manual_seed(s)).int()) == 1).sum())
              for s in range(300)]  # fmt: skip
    assert 3.0 < sum(starts) / len(starts) <= 4.0  # overlapping spans merge, so at most 4
    assert not span_mask(5, 0.5, 10, torch.Generator()).any()  # shorter than a span: nothing to mask


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


def test_layer_features_are_the_same_alone_or_in_a_padded_batch():
    model = tiny_model()
    waves = [torch.from_numpy(speechlike(s, 16000, i)) for i, s in enumerate((0.9, 0.31, 1.7))]
    for layer in (0, 1, 2):
        batch = model.layer_features(waves, layer)
        for wave, batched in zip(waves, batch):
            alone = model.layer_features([wave], layer)[0]
            assert alone.shape == batched.shape == (model.num_frames(wave.numel()), 32)
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


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
        mask = torch.stack([span_mask(frames, 0.3, 5, torch.Generator().manual_seed(step * 4 + i)) for i in range(4)])
        out = model(waves, targets, mask)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
