"""The criteria compared: rmtdeploy's strategies and torch-pruning's importances, through one pruner.

Every criterion prunes through the same :func:`rmtdeploy.pruning.prune_model`, adapters and width rules:

* rmtdeploy's strategies: magnitude, rmt, hybrid, edge-budget, dynamic (its between-step distillation off,
  so every criterion gets the same fine-tune budget; it switches scoring by depth);
* torch-pruning's importances as peers: group L1 (``GroupMagnitudeImportance(p=1)``), Taylor, Hessian,
  random. Group L2 is the ``magnitude`` strategy itself (the very TP class);
* ablations (:data:`ABLATIONS`), a strategy with other knobs or pruner options.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from rmtdeploy.benchmark.allocation import fastest_allocation

SPECTRAL = ("rmt", "hybrid", "edge-budget", "dynamic")
DATA_SPECTRAL = ("data-rmt",)  # spectral scores of the weights as the calibration images see them
STRATEGIES = ("magnitude", *SPECTRAL, *DATA_SPECTRAL)
PEERS = ("tp-l1", "tp-taylor", "tp-hessian", "tp-random")
CRITERIA = (*STRATEGIES, *PEERS)
# Ablations, not in the default run: rmt as it was before the benchmark (one global ranking, norm layers
# ignored) and each change alone; the "flow" score; and dynamic without its switch to spectral scoring (is
# its gain the spectrum's, or the progressive steps'?); and the head rounding of the width rules
# (torch-pruning's: any ratio > 0 takes a head). Each: (strategy, knobs, pruner options).
ABLATIONS = {
    "rmt-global": ("rmt", {"allocation": "global", "norm_scales": False}, {}),
    "rmt-global-scaled": ("rmt", {"allocation": "global", "norm_scales": True}, {}),
    "rmt-uniform": ("rmt", {"allocation": "uniform"}, {}),  # rmt's default before allocation=auto
    "rmt-unscaled": ("rmt", {"allocation": "uniform", "norm_scales": False}, {}),
    "rmt-flow": ("rmt", {"score": "flow"}, {}),
    "dynamic-magnitude": ("dynamic", {"then": "magnitude"}, {}),
    "dynamic-hybrid": ("dynamic", {"then": "hybrid"}, {}),  # dynamic's default before the trap run
    # data-rmt on the inputs' second moment instead of their covariance (their constant part kept); the
    # issue-23 run measured both (there the default was the second moment: "data-rmt" then = this row).
    # Both on the data view alone (fisher off), as they were measured.
    "data-rmt-raw": ("data-rmt", {"centred": False, "fisher": "off"}, {}),
    "data-rmt-centred": ("data-rmt", {"centred": True, "fisher": "off"}, {}),
    # data-rmt weighed by the loss (Γ½·W·Σ½): on the calibration labels, or on labels the model draws itself
    # (the default since the issue-23 fisher run); "data-rmt-fisher-off" is the data view alone (W·Σ½).
    "data-rmt-fisher": ("data-rmt", {"fisher": "labels"}, {}),
    "data-rmt-fisher-sampled": ("data-rmt", {"fisher": "sampled"}, {}),
    "data-rmt-fisher-off": ("data-rmt", {"fisher": "off"}, {}),
    # Latency-aware allocation (rmtdeploy.pruning.latency): does steering widths by measured cost lose accuracy?
    "hybrid-latency": ("hybrid", {}, {"latency_weights": fastest_allocation}),
    # A latency table's allocation (rmtdeploy.pruning.table_allocation) at the latency the table predicts for
    # hybrid's MAC allocation at the same keep: the most importance per measured ms, at equal latency.
    "hybrid-table": ("hybrid", {}, {}),
    # The same allocation at hybrid's MACs: the second point of the table's curve on the accuracy-latency plane.
    "hybrid-table-macs": ("hybrid", {}, {}),
    **{f"{name}-ceil-heads": (name, {}, {"head_rounding": "ceil"}) for name in STRATEGIES},
}


def gradient_copy(model, batches, per_sample: int | None) -> torch.nn.Module:
    """A copy of ``model`` whose ``.grad`` holds what TP's gradient importances read: the summed
    cross-entropy gradient (Taylor), or the mean squared per-sample gradient — the empirical Fisher
    diagonal that ``GroupHessianImportance`` expects — over ``per_sample`` images (Hessian).

    TP's own ``accumulate_grad`` keys its running sum by name but stores by parameter, so it keeps only
    the last sample; and ``prune_model`` scores a deep copy, which the accumulator would not reach. The
    Hessian diagonal is therefore put in ``.grad`` here, where the copy's scores read it."""
    copy_ = copy.deepcopy(model).eval()
    copy_.zero_grad(set_to_none=True)
    if per_sample is None:
        for images, labels in batches:
            F.cross_entropy(copy_(images), labels).backward()
        return copy_
    squares = {name: torch.zeros_like(p) for name, p in copy_.named_parameters()}
    images = torch.cat([b[0] for b in batches])[:per_sample]
    labels = torch.cat([b[1] for b in batches])[:per_sample]
    for image, label in zip(images, labels, strict=True):
        copy_.zero_grad(set_to_none=True)
        F.cross_entropy(copy_(image[None]), label[None]).backward()
        for name, p in copy_.named_parameters():
            if p.grad is not None:
                squares[name] += p.grad.pow(2)
    for name, p in copy_.named_parameters():
        p.grad = squares[name] / len(images)
    return copy_


def _peer_importance(criterion: str, model, calibration: list, hessian_samples: int, seed: int):
    """The torch-pruning importance of a peer criterion and the model it scores (a gradient copy for
    Taylor and Hessian)."""
    import torch_pruning as tp

    if criterion == "tp-l1":
        return model, tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "tp-taylor":
        return gradient_copy(model, calibration, None), tp.importance.GroupTaylorImportance()
    if criterion == "tp-hessian":
        return gradient_copy(model, calibration, hessian_samples), tp.importance.GroupHessianImportance()
    if criterion == "tp-random":
        torch.manual_seed(seed)
        return model, tp.importance.RandomImportance()
    raise ValueError(f"unknown criterion {criterion}")


def prune_with(
    criterion: str,
    model,
    keep: float,
    calibration: list,
    *,
    image_size: int,
    round_to: int,
    hessian_samples: int,
    seed: int,
    latency_table=None,
    table_trust: float | None = None,
):
    """Prune ``model`` to ``keep`` MACs with ``criterion`` (a strategy, a peer or an ablation); returns
    (result, scoring seconds). ``calibration`` (a list of (images, labels) batches) feeds the strategies
    that read activations, the peers' gradients, and the peers' BatchNorm recalibration. ``hybrid-table``
    needs the model's ``latency_table``: its budget is the table's prediction for hybrid at ``keep``;
    ``table_trust``: its trust region (None: prune_model's default)."""
    from rmtdeploy.pruning import prune_model, recalibrate_batchnorm
    from rmtdeploy.scores import get_strategy

    example = torch.zeros(1, 3, image_size, image_size)
    options = {"keep_macs": keep, "round_to": round_to, "example_inputs": example}
    if criterion in ("hybrid-table", "hybrid-table-macs"):
        if latency_table is None:
            raise ValueError(f"{criterion} needs the family's latency table (Settings.latency_tables)")
        strategy = get_strategy("hybrid")
        budget = {"keep_macs": keep}
        if criterion == "hybrid-table":
            reference = strategy.prune(model, calibration_batches=calibration, **options)
            budget = {
                "latency_budget_ms": latency_table.predict(
                    latency_table.widths_of(reference.plan["operations"])
                )
            }
        trust = {} if table_trust is None else {"latency_table_trust": table_trust}
        result = strategy.prune(model, calibration_batches=calibration, latency_table=latency_table, **budget,
                                round_to=round_to, example_inputs=example, **trust)  # fmt: skip
        return result, result.timings.get("spectra_s", 0.0) + result.timings["scores_s"]
    if criterion in STRATEGIES or criterion in ABLATIONS:
        name, knobs, extra = ABLATIONS.get(criterion, (criterion, {}, {}))
        result = get_strategy(name, **knobs).prune(model, calibration_batches=calibration, **options, **extra)
        return result, result.timings.get("spectra_s", 0.0) + result.timings["scores_s"]
    started = time.perf_counter()
    source, importance = _peer_importance(criterion, model, calibration, hessian_samples, seed)
    gradients_s = time.perf_counter() - started
    result = prune_model(source, importance=importance, **options)
    recalibrate_batchnorm(result.model, calibration)
    return result, gradients_s + result.timings["scores_s"]
