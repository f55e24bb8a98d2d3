"""Heavy-tail and rank summaries of a singular-value spectrum.

The power-law exponent α follows WeightWatcher (Martin & Mahoney, "Implicit self-regularization in deep
neural networks", JMLR 2021): the tail of the eigenvalue density ρ(λ) ∝ λ^(−α) above x_min, α by maximum
likelihood (Clauset, Shalizi & Newman 2009) α = 1 + n_tail / Σ ln(λ_i / x_min), and x_min chosen to
minimise the Kolmogorov–Smirnov distance between the tail and the fitted law.
"""

from __future__ import annotations

import numpy as np

# Too few tail points give an α dominated by noise; WeightWatcher also refuses tiny tails.
MIN_TAIL = 10
# Candidate x_min values are subsampled: the KS scan is O(p²) and a few hundred candidates suffice.
MAX_XMIN_CANDIDATES = 256


def power_law_alpha(eigenvalues: np.ndarray) -> tuple[float | None, float | None]:
    """(α, x_min) of the eigenvalue tail, or (None, None) when the spectrum is too short or degenerate."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    lam = lam[lam > lam.max() * 1e-12] if lam.size and lam.max() > 0 else lam[:0]
    p = lam.size
    if p < 2 * MIN_TAIL:
        return None, None
    log_lam = np.log(lam)
    suffix_log = np.cumsum(log_lam[::-1])[::-1]  # Σ_{i≥j} ln λ_i
    starts = np.arange(0, p - MIN_TAIL)
    if starts.size > MAX_XMIN_CANDIDATES:
        starts = np.unique(np.linspace(0, p - MIN_TAIL - 1, MAX_XMIN_CANDIDATES).astype(int))
    n_tail = p - starts
    log_sum = suffix_log[starts] - n_tail * log_lam[starts]
    valid = log_sum > 0
    alpha = np.where(valid, 1 + n_tail / np.where(valid, log_sum, 1.0), np.nan)

    # KS distance of each candidate tail: rows are candidates, columns tail positions (masked past the end).
    offsets = np.arange(p)[None, :]
    index = starts[:, None] + offsets
    in_tail = index < p
    tail_log = np.where(in_tail, log_lam[np.minimum(index, p - 1)], 0.0)
    ratio_log = tail_log - log_lam[starts][:, None]
    fitted = 1 - np.exp((1 - alpha[:, None]) * ratio_log)
    empirical_hi = (offsets + 1) / n_tail[:, None]
    empirical_lo = offsets / n_tail[:, None]
    gap = np.maximum(np.abs(empirical_hi - fitted), np.abs(fitted - empirical_lo))
    ks = np.where(in_tail, gap, 0.0).max(axis=1)
    ks = np.where(valid, ks, np.inf)
    if not np.isfinite(ks).any():
        return None, None
    best = int(np.argmin(ks))
    return float(alpha[best]), float(lam[starts[best]])


def stable_rank(singular_values: np.ndarray) -> float:
    """‖W‖_F² / ‖W‖₂²: how many directions carry the energy, robust to tiny singular values."""
    s = np.asarray(singular_values, dtype=np.float64)
    top = s.max() if s.size else 0.0
    return float((s**2).sum() / top**2) if top > 0 else 0.0


def entropy_effective_rank(singular_values: np.ndarray) -> float:
    """exp(H) of the normalised singular values (Roy & Vetterli, 2007)."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    prob = s[s > 0] / total
    return float(np.exp(-(prob * np.log(prob)).sum()))
