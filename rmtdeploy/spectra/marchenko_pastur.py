"""The Marchenko–Pastur law and the estimators that fit it to a weight matrix.

Convention: W is M×N, p = min(M, N), n = max(M, N), γ = p / n ∈ (0, 1]. With iid entries of
variance σ², the p eigenvalues λ = s² / n of WWᵀ/n (s the singular values) follow MP(γ, σ²) with support
[σ²(1−√γ)², σ²(1+√γ)²]; the singular-value bulk edge is σ₊ = σ(√M + √N). References:
Marchenko & Pastur (1967); Ke, Ma & Lin, "Estimation of the number of spiked eigenvalues ... BEMA" (2021);
Johnstone (2001) for the Tracy–Widom scaling; Gavish & Donoho (2014) for the median estimator.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Tracy–Widom (β=1) upper quantiles, Johnstone (2001) table 1. Used for the finite-size edge correction.
TRACY_WIDOM_1_QUANTILES = {0.90: 0.4501, 0.95: 0.9793, 0.99: 2.0234}

_GRID_POINTS = 4097


def mp_support(gamma: float, sigma2: float = 1.0) -> tuple[float, float]:
    """Bulk edges (λ₋, λ₊) of MP(γ, σ²)."""
    root = math.sqrt(gamma)
    return sigma2 * (1 - root) ** 2, sigma2 * (1 + root) ** 2


def mp_pdf(x, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """MP density f(x) = √((λ₊−x)(x−λ₋)) / (2π σ² γ x) on the bulk, zero elsewhere (γ ≤ 1)."""
    _check_gamma(gamma)
    x = np.asarray(x, dtype=np.float64)
    lo, hi = mp_support(gamma, sigma2)
    inside = (x > lo) & (x < hi)
    safe = np.where(inside, x, 1.0)
    dens = np.sqrt(np.clip((hi - safe) * (safe - lo), 0.0, None)) / (2 * math.pi * sigma2 * gamma * safe)
    return np.where(inside, dens, 0.0)


@lru_cache(maxsize=256)
def _unit_cdf_table(gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) on a grid for MP(γ, 1).

    The substitution x = m − h·cos θ (m, h the bulk centre and half-width) turns the square-root
    singularities at both edges into the smooth integrand h² sin²θ / (2πγ x(θ)), which the trapezoid rule
    integrates to ~1e-9 on this grid.
    """
    lo, hi = mp_support(gamma)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    theta = np.linspace(0.0, math.pi, _GRID_POINTS)
    x = centre - half * np.cos(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = half**2 * np.sin(theta) ** 2 / (2 * math.pi * gamma * x)
    # At γ = 1 the lower edge is 0 and θ = 0 is a 0/0 point; its limit is h / (πγ).
    integrand[0] = 0.0 if lo > 0 else half / (math.pi * gamma)
    steps = np.diff(theta) * (integrand[1:] + integrand[:-1]) / 2
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    return x, cdf / cdf[-1]


def mp_cdf(x, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """MP cumulative distribution function."""
    _check_gamma(gamma)
    grid, cdf = _unit_cdf_table(round(float(gamma), 12))
    return np.interp(np.asarray(x, dtype=np.float64) / sigma2, grid, cdf, left=0.0, right=1.0)


def mp_quantile(q, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """Inverse of :func:`mp_cdf` for q ∈ [0, 1]."""
    _check_gamma(gamma)
    grid, cdf = _unit_cdf_table(round(float(gamma), 12))
    return sigma2 * np.interp(np.asarray(q, dtype=np.float64), cdf, grid)


def mp_median(gamma: float) -> float:
    return float(mp_quantile(0.5, gamma))


def tracy_widom_edge_shift(n: int, gamma: float, level: float = 0.99) -> float:
    """Upper TW quantile of the largest unit-variance eigenvalue, as an offset above (1+√γ)².

    t_level · n^(−2/3) · γ^(−1/6) · (1+√γ)^(4/3)  (Johnstone's scaling, divided by n).
    """
    if level not in TRACY_WIDOM_1_QUANTILES:
        raise ValueError(f"Tracy–Widom level must be one of {sorted(TRACY_WIDOM_1_QUANTILES)}")
    t = TRACY_WIDOM_1_QUANTILES[level]
    return t * n ** (-2 / 3) * gamma ** (-1 / 6) * (1 + math.sqrt(gamma)) ** (4 / 3)


def fit_sigma2_bema(eigenvalues: np.ndarray, gamma: float, window: float = 0.25) -> float:
    """BEMA noise variance: least squares σ² matching sorted eigenvalues to MP(γ,1) quantiles.

    Only the central window [window, 1 − window] of the spectrum is matched, so spikes above the bulk
    (and the smallest eigenvalues, which finite size distorts most) do not bias the fit.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    p = lam.size
    levels = (np.arange(p) + 0.5) / p
    central = (levels >= window) & (levels <= 1 - window)
    if central.sum() < 2:
        central = np.ones(p, dtype=bool)
    q = mp_quantile(levels[central], gamma)
    return float(np.dot(q, lam[central]) / np.dot(q, q))


def fit_sigma2_median(singular_values: np.ndarray, n: int, gamma: float) -> float:
    """Gavish–Donoho style σ² = median(s²/n) / median of MP(γ, 1)."""
    lam = np.asarray(singular_values, dtype=np.float64) ** 2 / n
    return float(np.median(lam) / mp_median(gamma))


def ks_distance_to_mp(eigenvalues: np.ndarray, gamma: float, sigma2: float) -> float:
    """Kolmogorov–Smirnov distance between the empirical distribution of ``eigenvalues`` and MP(γ, σ²)."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    p = lam.size
    if p == 0:
        return float("nan")
    model = mp_cdf(lam, gamma, sigma2)
    upper = np.arange(1, p + 1) / p - model
    lower = model - np.arange(p) / p
    return float(max(upper.max(), lower.max()))


def _check_gamma(gamma: float) -> None:
    if not 0 < gamma <= 1:
        raise ValueError(f"aspect ratio γ must lie in (0, 1], got {gamma}")
