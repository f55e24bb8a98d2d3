"""The rules of :func:`rmtdeploy.pruning.prune_model`'s arguments, callable before any model is built, and
the budget as the plan records it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rmtdeploy.errors import RmtdeployError

HEAD_ROUNDINGS = ("floor", "ceil")
_NOT_GIVEN = object()


def check_pruning_arguments(
    *,
    keep_macs: float | None = None,
    keep_params: float | None = None,
    round_to: int = 8,
    min_channels: int = 8,
    head_rounding: str = "floor",
    global_pruning: bool = False,
    pruning_ratio_dict: Mapping | None = None,
    latency_budget_ms: float | None = None,
    latency_table: Any = _NOT_GIVEN,
    latency_weights: Any = None,
    latency_table_trust: Any = 0.0,
) -> None:
    """The rules of :func:`prune_model`'s arguments, callable before any model is built. The latency table's
    rules are checked when ``latency_table`` is passed (``None`` included): a caller that reads the table
    later (the prune stage) checks them then."""
    if keep_macs is not None and keep_params is not None:
        raise RmtdeployError("give keep_macs or keep_params, not both")
    if latency_budget_ms is not None and (keep_macs is not None or keep_params is not None):
        raise RmtdeployError("give one budget: latency_budget_ms, keep_macs or keep_params")
    if keep_macs is None and keep_params is None and latency_budget_ms is None and not pruning_ratio_dict:
        raise RmtdeployError("give a budget: keep_macs or keep_params (a fraction in (0, 1])")
    for name, keep in (("keep_macs", keep_macs), ("keep_params", keep_params)):
        if keep is not None and (
            not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0 < keep <= 1
        ):
            raise RmtdeployError(f"{{param}} must lie in (0, 1], got {keep!r}", param=name)
    if latency_budget_ms is not None and (
        isinstance(latency_budget_ms, bool)
        or not isinstance(latency_budget_ms, (int, float))
        or not 0 < latency_budget_ms < math.inf
    ):
        raise RmtdeployError(
            f"{{param}} must be a time in ms > 0, got {latency_budget_ms!r}", param="latency_budget_ms"
        )
    if (
        isinstance(latency_table_trust, bool)
        or not isinstance(latency_table_trust, (int, float))
        or not (0 <= latency_table_trust <= 1)
    ):
        raise RmtdeployError(
            f"{{param}} must lie in [0, 1] (0: no trust region), got {latency_table_trust!r}",
            param="latency_table_trust",
        )
    for name, value in (("round_to", round_to), ("min_channels", min_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RmtdeployError(f"{{param}} must be a positive integer, got {value!r}", param=name)
    if head_rounding not in HEAD_ROUNDINGS:
        raise RmtdeployError(
            f"{{param}} must be one of {', '.join(HEAD_ROUNDINGS)}, got '{head_rounding}'",
            param="head_rounding",
        )
    if global_pruning and pruning_ratio_dict:
        raise RmtdeployError(
            "pruning_ratio_dict sets per-layer ratios; it cannot be combined with global_pruning"
        )
    if latency_table is not _NOT_GIVEN:
        _check_table_request(latency_table, latency_weights, global_pruning, latency_budget_ms,
                             counted=keep_macs is not None or keep_params is not None)  # fmt: skip


def _check_table_request(table, latency_weights, global_pruning: bool, budget_ms, *, counted: bool) -> None:
    """The rules of a latency-table allocation that need no model (``counted``: a MAC or parameter budget)."""
    if table is None:
        if budget_ms is not None:
            raise RmtdeployError(
                "{param} is met by a latency table's prediction, and no latency table is given",
                param="latency_budget_ms",
            )
        return
    from rmtdeploy.pruning.latency_table import LatencyTable

    if not isinstance(table, LatencyTable):
        raise RmtdeployError(
            "latency_table must be a LatencyTable (rmtdeploy.pruning.latency_table.load_latency_table)"
        )
    if latency_weights is not None:
        raise RmtdeployError("give latency_table or latency_weights, not both: each chooses the widths")
    if global_pruning:
        raise RmtdeployError(
            "a latency table chooses each unit's width; it cannot be combined with global_pruning"
        )
    if budget_ms is None and not counted:
        raise RmtdeployError("a latency table needs a budget: keep_macs, keep_params or latency_budget_ms")


def budget_json(keep_macs: float | None, keep_params: float | None, budget_ms: float | None) -> dict | None:
    if budget_ms is not None:
        return {"metric": "latency_ms", "budget": budget_ms, "judged_by": "latency table"}
    if keep_macs is not None:
        return {"metric": "macs", "keep": keep_macs}
    if keep_params is not None:
        return {"metric": "params", "keep": keep_params}
    return None
