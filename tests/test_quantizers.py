import pytest
import torch

from speechvq.config import QuantizerConfig, TrainEncoderConfig
from speechvq.encoder.model import gumbel_temperature
from speechvq.encoder.quantizers import GumbelVQ, ResidualVQ, VectorQuantizerEMA, build_quantizer

CONFIGS = {
    "vq_ema": QuantizerConfig(name="vq_ema", codebook_size=16),
    "residual": QuantizerConfig(name="residual", codebook_size=8, num_codebooks=3),
    "product": QuantizerConfig(name="product", codebook_size=8, num_codebooks=2),
    "gumbel": QuantizerConfig(name="gumbel", codebook_size=8, num_codebooks=2),
}
DIM = 12


def sample_z(seed=0, batch=3, frames=40):
    return torch.randn(batch, frames, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_and_index_range(name):
    torch.manual_seed(0)
    quantizer = build_quantizer(CONFIGS[name], DIM)
    out = quantizer(sample_z(), torch.Generator().manual_seed(1))
    cfg = CONFIGS[name]
    assert out.quantized.shape == (3, 40, DIM)
    assert out.indices.shape[:2] == (3, 40) and out.indices.dtype == torch.long
    assert out.indices.shape[2] <= cfg.num_codebooks  # residual dropout may use fewer stages
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < cfg.codebook_size
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.stats["perplexity"] >= 1.0 and 0 < out.stats["usage"] <= 1.0


@pytest.mark.parametrize("name", ["vq_ema", "residual", "product"])
def test_straight_through_gradient_is_identity(name):
    torch.manual_seed(0)
    quantizer = build_quantizer(CONFIGS[name], DIM)
    z = sample_z().requires_grad_(True)
    weights = torch.randn(3, 40, DIM)
    out = quantizer(z, torch.Generator().manual_seed(1))
    (out.quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # d(quantized)/dz = I under straight-through


def test_gumbel_gradient_reaches_the_logits():
    torch.manual_seed(0)
    quantizer = build_quantizer(CONFIGS["gumbel"], DIM)
    z = sample_z().requires_grad_(True)
    out = quantizer(z, torch.Generator().manual_seed(1))
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0 and quantizer.logits.weight.grad.abs().sum() > 0
    assert "prob_perplexity" in out.stats and out.stats["temperature"] == quantizer.temperature


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_indices_to_codes(name):
    torch.manual_seed(0)
    quantizer = build_quantizer(CONFIGS[name], DIM)
    quantizer(sample_z(), torch.Generator().manual_seed(1))  # initialise (k-means) in training mode
    quantizer.eval()
    z = sample_z(seed=5)
    indices = quantizer.encode(z)
    out = quantizer(z)
    torch.testing.assert_close(quantizer.decode(indices), out.quantized, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.indices, indices.reshape(out.indices.shape))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_determinism(name):
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        quantizer = build_quantizer(CONFIGS[name], DIM)
        outputs.append(quantizer(sample_z(), torch.Generator().manual_seed(3)))
    assert torch.equal(outputs[0].indices, outputs[1].indices)
    assert torch.equal(outputs[0].quantized, outputs[1].quantized)


def test_vq_nearest_codeword_and_kmeans_init():
    quantizer = VectorQuantizerEMA(DIM, 16)
    z = sample_z()
    quantizer(z, torch.Generator().manual_seed(0))
    assert bool(quantizer.initialized)
    quantizer.eval()
    flat = z.reshape(-1, DIM)
    brute = torch.cdist(flat, quantizer.codebook).argmin(1)
    assert torch.equal(quantizer.encode(z).reshape(-1), brute)


def test_dead_codes_are_restarted_from_encoder_outputs():
    quantizer = VectorQuantizerEMA(DIM, 8, dead_code_steps=2, kmeans_init=False)
    quantizer.codebook[3] = quantizer.ema_sum[3] = 1e3  # far from every input: never chosen
    for step in range(2):  # unused after steps 1 and 2: re-seeded at the end of step 2
        z = sample_z(seed=step) + 5.0  # away from the origin, so a code re-seeded at zero cannot pass
        quantizer(z, torch.Generator().manual_seed(step))
    rows = z.reshape(-1, DIM)
    # The restarted code is one of this step's encoder outputs, exactly (not near the data, not the origin).
    assert (rows == quantizer.codebook[3]).all(dim=1).any()
    assert torch.equal(quantizer.ema_sum[3], quantizer.codebook[3]) and float(quantizer.ema_count[3]) == 1.0
    assert int(quantizer.steps_unused[3]) == 0


def test_without_restart_a_dead_code_stays_dead():
    quantizer = VectorQuantizerEMA(DIM, 8, dead_code_steps=0, kmeans_init=False)
    quantizer.codebook[3] = quantizer.ema_sum[3] = 1e3
    for step in range(3):
        quantizer(sample_z(), torch.Generator().manual_seed(step))
    assert quantizer.codebook[3].abs().min() > 100


def test_residual_dropout_and_bitrate_control():
    torch.manual_seed(0)
    quantizer = ResidualVQ(DIM, 8, num_stages=4, dropout=True)
    used = {quantizer(sample_z(), torch.Generator().manual_seed(s)).indices.shape[-1] for s in range(20)}
    assert used == {1, 2, 3, 4}
    quantizer.eval()
    z = sample_z(seed=9)
    errors = []
    for stages in (1, 2, 3, 4):
        quantizer.active_stages = stages
        errors.append(float((quantizer(z).quantized - z).square().mean()))
    assert errors == sorted(errors, reverse=True)  # each extra stage reduces the error


def test_gumbel_temperature_anneals_from_start_to_end():
    config = TrainEncoderConfig(steps=100, quantizer=QuantizerConfig(gumbel_temperature=[2.0, 0.5]))
    temps = [gumbel_temperature(config, s) for s in range(100)]
    assert temps[0] == 2.0 and temps[-1] == 0.5 and all(a >= b for a, b in zip(temps, temps[1:]))
    assert gumbel_temperature(config, 69) == pytest.approx(0.5, rel=0.03)


def test_gumbel_eval_is_argmax():
    torch.manual_seed(0)
    quantizer = GumbelVQ(DIM, 8, 2).eval()
    z = sample_z()
    logits = quantizer.logits(z).view(3, 40, 2, 8)
    assert torch.equal(quantizer(z).indices, logits.argmax(-1))
