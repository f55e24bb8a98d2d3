"""The spectral core checked against theory: MP law, noise-level recovery, BBP detectability, null models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from scipy import integrate

from rmtdeploy.spectra import analyze_matrix, analyze_model, channel_signal_energy
from rmtdeploy.spectra.heavy_tail import power_law_alpha
from rmtdeploy.spectra.marchenko_pastur import (
    fit_sigma2_median,
    mp_cdf,
    mp_pdf,
    mp_quantile,
    mp_support,
)

# The wide ViT-base shape is covered in `make test-slow`: (64, 256) and (96, 864) are wide already.
NOISE_SHAPES = [
    (64, 256),
    (384, 384),
    pytest.param((768, 3072), marks=pytest.mark.slow),
    pytest.param((3072, 768), marks=pytest.mark.slow),
    (96, 864),
]
SIGMA = 0.02


def gaussian(shape, seed, sigma=SIGMA):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * sigma


@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.25, 1 / 9, 0.01])
def test_mp_density_integrates_to_one_and_cdf_matches_numerical_integration(gamma):
    lo, hi = mp_support(gamma)
    total, _ = integrate.quad(lambda x: float(mp_pdf(x, gamma)), lo, hi, limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)
    for x in np.linspace(lo, hi, 9)[1:-1]:
        reference, _ = integrate.quad(lambda t: float(mp_pdf(t, gamma)), lo, x, limit=200)
        assert float(mp_cdf(x, gamma)) == pytest.approx(reference, abs=2e-6)


def test_mp_cdf_scales_with_sigma2_and_quantile_inverts_it():
    gamma, sigma2 = 0.3, 4.0
    x = np.linspace(*mp_support(gamma, sigma2), 50)
    assert np.allclose(mp_cdf(x, gamma, sigma2), mp_cdf(x / sigma2, gamma), atol=1e-12)
    q = np.linspace(0.01, 0.99, 30)
    assert np.allclose(mp_cdf(mp_quantile(q, gamma, sigma2), gamma, sigma2), q, atol=1e-6)


def test_mp_moments_match_theory():
    # E[λ] = σ², E[λ²] = σ⁴(1 + γ) for MP(γ, σ²).
    gamma = 0.4
    lo, hi = mp_support(gamma)
    mean, _ = integrate.quad(lambda x: x * float(mp_pdf(x, gamma)), lo, hi, limit=200)
    second, _ = integrate.quad(lambda x: x * x * float(mp_pdf(x, gamma)), lo, hi, limit=200)
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert second == pytest.approx(1 + gamma, abs=1e-6)


@pytest.mark.parametrize("shape", NOISE_SHAPES)
def test_pure_noise_recovers_sigma_within_2_percent_and_is_spike_free(shape):
    seeds = 100
    spiky = 0
    for seed in range(seeds):
        spectrum = analyze_matrix(gaussian(shape, seed))
        assert spectrum.status == "ok"
        assert math.sqrt(spectrum.sigma2) == pytest.approx(SIGMA, rel=0.02)
        assert spectrum.edge == pytest.approx(SIGMA * (math.sqrt(shape[0]) + math.sqrt(shape[1])), rel=0.02)
        spiky += spectrum.spikes > 0
    assert spiky <= 0.05 * seeds


def test_median_estimator_agrees_with_bema_on_noise():
    matrix = gaussian((256, 1024), 0)
    s = torch.linalg.svdvals(matrix).double().numpy()
    assert math.sqrt(fit_sigma2_median(s, 1024, 0.25)) == pytest.approx(SIGMA, rel=0.02)


def planted(shape, rank, strength, seed):
    """Noise plus a rank-``rank`` signal whose singular values are ``strength`` × the BBP threshold."""
    rows, cols = shape
    generator = torch.Generator().manual_seed(10_000 + seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=generator))
    threshold = SIGMA * (rows * cols) ** 0.25
    d = strength * threshold * torch.linspace(1.0, 1.5, rank)
    return gaussian(shape, seed) + (u * d) @ v.T


@pytest.mark.parametrize("shape", [(256, 1024), (384, 384), (96, 864)])
@pytest.mark.parametrize("rank", [1, 5])
def test_planted_signal_above_bbp_gives_exactly_r_spikes(shape, rank):
    for seed in range(10):
        spectrum = analyze_matrix(planted(shape, rank, strength=2.0, seed=seed))
        assert spectrum.spikes == rank
        assert 0 < spectrum.ser < 1
        assert math.sqrt(spectrum.sigma2) == pytest.approx(SIGMA, rel=0.05)


@pytest.mark.parametrize("shape", [(256, 1024), (384, 384)])
def test_planted_signal_below_bbp_is_invisible_in_most_seeds(shape):
    detections = sum(analyze_matrix(planted(shape, 3, strength=0.5, seed=s)).spikes > 0 for s in range(30))
    assert detections <= 3


def test_channel_signal_energy_finds_the_rows_carrying_the_signal():
    rows, cols = 128, 512
    matrix = gaussian((rows, cols), 3)
    signal_rows = torch.arange(0, rows, 8)
    direction = torch.randn(cols, generator=torch.Generator().manual_seed(4))
    matrix[signal_rows] += 0.2 * direction / direction.norm() * math.sqrt(rows)
    spectrum = analyze_matrix(matrix)
    assert spectrum.spikes >= 1
    energy, _ = channel_signal_energy(matrix, spectrum.spikes)
    top = set(torch.topk(energy, len(signal_rows)).indices.tolist())
    assert top == set(signal_rows.tolist())


@pytest.mark.parametrize("shape", [(48, 96), (96, 48)])
def test_channel_signal_energy_is_the_row_and_column_energy_of_the_top_svd_part(shape):
    matrix = gaussian(shape, 5)
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    signal = (u[:, :3] * s[:3]) @ vh[:3]
    rows, cols = channel_signal_energy(matrix, 3)
    assert torch.allclose(rows.double(), signal.pow(2).sum(1), rtol=1e-4, atol=0)
    assert torch.allclose(cols.double(), signal.pow(2).sum(0), rtol=1e-4, atol=0)
    assert not any(t.any() for t in channel_signal_energy(matrix, 0))


def test_power_law_alpha_recovers_a_pareto_tail():
    rng = np.random.default_rng(0)
    true_alpha = 2.5
    samples = (1 - rng.random(4000)) ** (-1 / (true_alpha - 1))  # Pareto density ∝ x^(−α), x ≥ 1
    alpha, xmin = power_law_alpha(samples)
    assert alpha == pytest.approx(true_alpha, abs=0.15)
    assert xmin is not None


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "resnet18"])
def test_random_timm_model_is_a_null_model_and_a_planted_layer_lights_up(model_name):
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False)
    spectra = analyze_model(model)
    fitted = [s for s in spectra if s.status == "ok"]
    assert len(fitted) >= 10
    spike_free = sum(s.spikes == 0 for s in fitted) / len(fitted)
    assert spike_free >= 0.9, f"only {spike_free:.0%} of random layers are spike-free"

    target = fitted[len(fitted) // 2]
    module = dict(model.named_modules())[target.module]
    with torch.no_grad():
        weight = module.weight.view(module.weight.shape[0], -1)
        rows = slice(None) if target.block is None else slice(*_block_rows(target, module))
        block = weight[rows]
        size = block.shape[0] * block.shape[1]
        strength = 4 * math.sqrt(target.sigma2) * size**0.25  # 4x the BBP threshold
        u = torch.linalg.qr(torch.randn(block.shape[0], 2))[0]
        v = torch.linalg.qr(torch.randn(block.shape[1], 2))[0]
        block += strength * u @ v.T
    lit = {s.name: s for s in analyze_model(model)}[target.name]
    assert lit.spikes == 2
    # Signal energy 2·d² against noise energy σ²·M·N; the spikes also absorb some noise, never less.
    expected_ser = 2 * strength**2 / (2 * strength**2 + target.sigma2 * size)
    assert lit.ser >= 0.9 * expected_ser
    assert lit.ser <= 3 * expected_ser


def _block_rows(spectrum, module):
    rows = module.weight.shape[0] // 3
    start = "qkv".index(spectrum.block) * rows
    return start, start + rows


@pytest.mark.parametrize(
    "matrix, status",
    [
        (torch.zeros(64, 128), "zero"),
        (torch.full((64, 128), float("nan")), "non_finite"),
        (
            torch.randn(64, 128).index_put_(
                (torch.tensor([3]), torch.tensor([5])), torch.tensor(float("inf"))
            ),
            "non_finite",
        ),
        (torch.randn(1, 300), "too_small"),
        (torch.randn(300, 1), "too_small"),
        (torch.randn(128, 8) @ torch.randn(8, 256), "rank_deficient"),
    ],
    ids=["zeros", "nan", "inf", "row", "column", "rank8"],
)
def test_degenerate_inputs_get_a_status_not_a_crash(matrix, status):
    spectrum = analyze_matrix(matrix)
    assert spectrum.status == status
    assert spectrum.spikes is None
    record = spectrum.record()
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in record.values())
