"""Per-layer spectral analysis: which weight matrices a model has, and what their spectra say.

Each prunable weight becomes a 2-D matrix whose rows are output channels (Linear as is; Conv2d reshaped
to C_out × C_in·kh·kw; a fused qkv Linear split into its q, k and v blocks), its singular values are
computed in batches of equal shape, and the Marchenko–Pastur fit gives the noise bulk, the spikes above
it and the share of energy they carry (SER).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.spectra.heavy_tail import entropy_effective_rank, power_law_alpha, stable_rank
from rmtdeploy.spectra.marchenko_pastur import (
    fit_sigma2_bema,
    fit_sigma2_median,
    ks_distance_to_mp,
    mp_support,
    tracy_widom_edge_shift,
)

# Below this many singular values the bulk has too few points for a meaningful MP fit.
MIN_RMT_DIM = 32

STATUS_OK = "ok"
STATUS_TOO_SMALL = "too_small"
STATUS_DEPTHWISE = "depthwise"
STATUS_ZERO = "zero"
STATUS_NON_FINITE = "non_finite"
STATUS_RANK_DEFICIENT = "rank_deficient"

SIGMA_METHODS = ("bema", "median")


@dataclass(frozen=True)
class SpectralFitConfig:
    """Knobs of the MP fit. Defaults keep false spikes on pure noise to about 1%."""

    method: str = "bema"  # "bema" (quantile matching) or "median" (Gavish–Donoho)
    window: float = 0.25  # BEMA matches the central [window, 1 − window] of the spectrum
    tracy_widom_level: float = 0.99  # edge correction quantile: P(noise spike) ≈ 1 − level

    def __post_init__(self) -> None:
        if self.method not in SIGMA_METHODS:
            raise RmtdeployError(
                f"{{param}} must be one of {', '.join(SIGMA_METHODS)}, got {self.method!r}", param="method"
            )
        if not 0 < self.window < 0.5:
            raise RmtdeployError(f"{{param}} must lie in (0, 0.5), got {self.window}", param="window")
        if not 0 < self.tracy_widom_level < 1:
            raise RmtdeployError(
                f"{{param}} is a quantile in (0, 1), got {self.tracy_widom_level}", param="tracy_widom_level"
            )


@dataclass
class WeightMatrix:
    """One matrix to analyse: rows are the output channels of ``module_name`` (restricted to ``block``)."""

    name: str
    module_name: str
    kind: str  # "linear" | "conv" | "depthwise_conv"
    matrix: torch.Tensor
    block: str | None = None  # "q", "k" or "v" for a fused attention projection
    row_offset: int = 0  # where this block's rows start in the module's output channels


@dataclass
class LayerSpectrum:
    """Spectral statistics of one weight matrix (JSON-ready: unknown values are None, never NaN)."""

    name: str
    module: str
    block: str | None
    kind: str
    shape: tuple[int, int]
    status: str
    message: str = ""
    gamma: float | None = None
    sigma2: float | None = None
    sigma2_median: float | None = None
    lambda_plus: float | None = None
    edge: float | None = None  # singular-value bulk edge σ₊ = σ(√M + √N)
    spike_threshold: float | None = None  # σ₊ with the Tracy–Widom finite-size correction
    spikes: int | None = None
    ser: float | None = None
    alpha: float | None = None
    alpha_xmin: float | None = None
    ks: float | None = None
    stable_rank: float | None = None
    effective_rank: float | None = None
    spectral_norm: float | None = None
    singular_values: np.ndarray | None = field(default=None, repr=False)

    def record(self) -> dict:
        """Flat dict for JSON/CSV (without the singular values)."""
        out = asdict(self)
        out.pop("singular_values")
        out["shape"] = list(self.shape)
        return out


def weight_matrices(model: nn.Module) -> list[WeightMatrix]:
    """Every Linear / Conv2d weight of ``model`` as a 2-D (out × in) float32 matrix, in module order."""
    found: list[WeightMatrix] = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().float()
            if _is_fused_qkv(module_name, module):
                rows = module.out_features // 3
                for index, block in enumerate("qkv"):
                    found.append(
                        WeightMatrix(
                            name=f"{module_name}:{block}",
                            module_name=module_name,
                            kind="linear",
                            matrix=weight[index * rows : (index + 1) * rows],
                            block=block,
                            row_offset=index * rows,
                        )
                    )
            else:
                found.append(WeightMatrix(module_name, module_name, "linear", weight))
        elif isinstance(module, nn.Conv2d):
            weight = module.weight.detach().float()
            depthwise = module.groups > 1 and module.groups == module.in_channels
            kind = "depthwise_conv" if depthwise else "conv"
            if module.groups > 1 and not depthwise:
                # A grouped conv is a block-diagonal matrix; its blocks are what carries a spectrum.
                kind = "depthwise_conv"
            found.append(WeightMatrix(module_name, module_name, kind, weight.reshape(weight.shape[0], -1)))
    return found


def _is_fused_qkv(module_name: str, module: nn.Linear) -> bool:
    # timm names the fused projection `qkv` in ViT/DeiT, Swin and Hiera alike.
    return module_name.rsplit(".", 1)[-1] == "qkv" and module.out_features % 3 == 0


def analyze_matrix(
    matrix: torch.Tensor,
    name: str = "matrix",
    config: SpectralFitConfig | None = None,
    singular_values: np.ndarray | None = None,
    *,
    module: str | None = None,
    block: str | None = None,
    kind: str = "linear",
) -> LayerSpectrum:
    """Fit the MP bulk of one matrix and measure what lies above it. Never raises on bad weights."""
    config = config or SpectralFitConfig()
    rows, cols = int(matrix.shape[0]), int(matrix.shape[1])
    base = dict(name=name, module=module or name, block=block, kind=kind, shape=(rows, cols))
    if kind == "depthwise_conv":
        return LayerSpectrum(
            **base, status=STATUS_DEPTHWISE, message="depthwise/grouped conv: too small for RMT"
        )
    if not torch.isfinite(matrix).all():
        return LayerSpectrum(**base, status=STATUS_NON_FINITE, message="weights contain NaN or Inf")
    if singular_values is None:
        # The same Gram-matrix path as analyze_model, so a single matrix is judged exactly as in a model.
        singular_values = batched_singular_values([matrix])[0]
    s = _descending(singular_values)
    if s is None:
        return LayerSpectrum(**base, status=STATUS_ZERO, message="all weights are zero")

    s, numerical_rank = _with_exact_rank(matrix, s, config.window)
    return _spectrum_summary(base, s, numerical_rank, config)


def analyze_singular_values(
    singular_values: np.ndarray,
    shape: tuple[int, int],
    name: str = "matrix",
    config: SpectralFitConfig | None = None,
    *,
    module: str | None = None,
    block: str | None = None,
    kind: str = "linear",
) -> LayerSpectrum:
    """The MP fit of a ``shape`` matrix known only by its singular values, computed exactly by the caller
    (e.g. from the eigenvalues of a Gram matrix it formed anyway); the same fit :func:`analyze_matrix` makes."""
    config = config or SpectralFitConfig()
    base = dict(name=name, module=module or name, block=block, kind=kind, shape=tuple(int(d) for d in shape))
    s = _descending(singular_values)
    if s is None:
        return LayerSpectrum(**base, status=STATUS_ZERO, message="all values are zero")
    if not np.isfinite(s).all():
        return LayerSpectrum(**base, status=STATUS_NON_FINITE, message="singular values contain NaN or Inf")
    return _spectrum_summary(base, s, _numerical_rank(s, max(shape)), config)


def _spectrum_summary(
    base: dict, s: np.ndarray, numerical_rank: int, config: SpectralFitConfig
) -> LayerSpectrum:
    rows, cols = base["shape"]
    p, n = min(rows, cols), max(rows, cols)
    summary = LayerSpectrum(
        **base,
        status=STATUS_OK,
        gamma=p / n,
        stable_rank=stable_rank(s),
        effective_rank=entropy_effective_rank(s),
        spectral_norm=float(s[0]),
        singular_values=s,
    )
    if p < MIN_RMT_DIM:
        summary.status = STATUS_TOO_SMALL
        summary.message = f"min dimension {p} < {MIN_RMT_DIM}: too small for RMT"
    elif p - numerical_rank > config.window * p:
        # Exact zeros reach into the matched window: a noise level fitted there would be meaningless.
        summary.status = STATUS_RANK_DEFICIENT
        summary.message = f"numerical rank {numerical_rank} of {p}: bulk is degenerate"
    else:
        _fit_bulk(summary, s, config)
    return summary


def _descending(singular_values: np.ndarray | None) -> np.ndarray | None:
    """Singular values sorted largest first (float64), or None when there are none or all are zero."""
    if singular_values is None or np.asarray(singular_values).size == 0:
        return None
    s = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    return None if s[0] == 0 else s


def _with_exact_rank(matrix: torch.Tensor, s: np.ndarray, window: float) -> tuple[np.ndarray, int]:
    """(singular values, numerical rank), recomputed by an exact SVD when the rank looks deficient:
    Gram-based values blur exact zeros into ~1% of the top, so rank deficiency is decided exactly."""
    p, n = min(matrix.shape), max(matrix.shape)
    numerical_rank = _numerical_rank(s, n)
    if p - numerical_rank > window * p:
        s = np.sort(torch.linalg.svdvals(matrix.float()).double().numpy())[::-1]
        numerical_rank = _numerical_rank(s, n)
    return s, numerical_rank


def _fit_bulk(summary: LayerSpectrum, s: np.ndarray, config: SpectralFitConfig) -> None:
    """Fill ``summary`` with the MP fit of the bulk of ``s`` and what lies above its edge."""
    rows, cols = summary.shape
    p, n = min(rows, cols), max(rows, cols)
    gamma = p / n
    eigenvalues = s**2 / n
    sigma2_bema = fit_sigma2_bema(eigenvalues, gamma, config.window)
    sigma2_median = fit_sigma2_median(s, n, gamma)
    sigma2 = sigma2_bema if config.method == "bema" else sigma2_median
    _, lambda_plus = mp_support(gamma, sigma2)
    threshold_lambda = sigma2 * (
        (1 + math.sqrt(gamma)) ** 2 + tracy_widom_edge_shift(n, gamma, config.tracy_widom_level)
    )
    spike_threshold = math.sqrt(n * threshold_lambda)
    spikes = int((s > spike_threshold).sum())
    energy = s**2
    summary.sigma2 = sigma2
    summary.sigma2_median = sigma2_median
    summary.lambda_plus = lambda_plus
    summary.edge = math.sqrt(sigma2) * (math.sqrt(rows) + math.sqrt(cols))
    summary.spike_threshold = spike_threshold
    summary.spikes = spikes
    summary.ser = float(energy[:spikes].sum() / energy.sum())
    summary.alpha, summary.alpha_xmin = power_law_alpha(eigenvalues)
    summary.ks = ks_distance_to_mp(eigenvalues[spikes:], gamma, sigma2)


def _numerical_rank(singular_values: np.ndarray, n: int) -> int:
    tolerance = singular_values[0] * n * np.finfo(np.float32).eps
    return int((singular_values > tolerance).sum())


def analyze_model(
    model: nn.Module,
    config: SpectralFitConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[LayerSpectrum]:
    """Analyse every prunable weight of ``model``; SVDs run batched over matrices of equal shape."""
    matrices = weight_matrices(model)
    singular = batched_singular_values(m.matrix for m in matrices)
    results = []
    for item, values in zip(matrices, singular, strict=True):
        results.append(
            analyze_matrix(
                item.matrix,
                item.name,
                config,
                values,
                module=item.module_name,
                block=item.block,
                kind=item.kind,
            )
        )
        if progress is not None:
            progress(1)
    return results


def batched_singular_values(matrices: Iterable[torch.Tensor]) -> list[np.ndarray | None]:
    """Singular values of many matrices, batched over matrices of equal shape.

    Computed as √eig(WWᵀ) of the p×p Gram matrix (float32 product, float64 symmetric eigensolver): many
    times faster than a batched ``svdvals`` and equal to it to ~1e-5 relative on every singular value
    above ~1% of the largest — the bulk edge and the spikes are far above that (measurements:
    docs/spectra.md, "Speed"). Matrices with NaN/Inf or all zeros are left as None for analyze_matrix.
    """
    matrices = list(matrices)
    out: list[np.ndarray | None] = [None] * len(matrices)
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, matrix in enumerate(matrices):
        if torch.isfinite(matrix).all() and bool(matrix.any()):
            by_shape[tuple(matrix.shape)].append(index)
    with torch.no_grad():
        for (rows, cols), indices in by_shape.items():
            stack = torch.stack([matrices[i].float() for i in indices])
            gram = stack @ stack.mT if rows <= cols else stack.mT @ stack
            eigenvalues = torch.linalg.eigvalsh(gram.double()).clamp_min(0.0)
            values = eigenvalues.flip(-1).sqrt().numpy()
            for row, index in enumerate(indices):
                out[index] = values[row]
    return out


def channel_signal_energy(matrix: torch.Tensor, spikes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per row, per column) squared norms of the rank-``spikes`` signal part S = U_k Σ_k V_kᵀ of ``matrix``.

    Rows are output channels: a row in the noise bulk scores ~0, a row carrying the learned directions
    scores high. Uses the eigenvectors of the smaller Gram matrix (float64): exact for the top directions,
    and far cheaper than a full SVD of a wide layer.
    """
    rows, cols = matrix.shape
    if spikes <= 0:
        return torch.zeros(rows), torch.zeros(cols)
    w = matrix.double()
    if cols <= rows:
        eigenvalues, vectors = torch.linalg.eigh(w.T @ w)
        v_top = vectors[:, -spikes:]  # right singular vectors, ascending order is fine for energies
        s2_top = eigenvalues[-spikes:].clamp_min(0)
        row_signal = (w @ v_top).pow(2).sum(1)
        col_signal = (v_top.pow(2) * s2_top).sum(1)
    else:
        eigenvalues, vectors = torch.linalg.eigh(w @ w.T)
        u_top = vectors[:, -spikes:]
        s2_top = eigenvalues[-spikes:].clamp_min(0)
        row_signal = (u_top.pow(2) * s2_top).sum(1)
        col_signal = (u_top.T @ w).pow(2).sum(0)
    return row_signal.float(), col_signal.float()
