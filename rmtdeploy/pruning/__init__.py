"""Structured pruning: scores pick channels and whole heads, torch-pruning's DependencyGraph removes them.

Pipeline stage: dense model (+ importance / per-layer ratios) -> ``PruneResult`` (pruned model, JSON plan,
MACs and parameters) -> ``save_pruned`` / ``load_pruned``.
"""

from rmtdeploy.pruning.batchnorm import recalibrate_batchnorm
from rmtdeploy.pruning.plan import layer_report, load_pruned, save_pruned
from rmtdeploy.pruning.prune import TARGET_TOLERANCE, prune_model
from rmtdeploy.pruning.result import PruneResult, count_macs_params

__all__ = [
    "TARGET_TOLERANCE",
    "PruneResult",
    "count_macs_params",
    "layer_report",
    "load_pruned",
    "prune_model",
    "recalibrate_batchnorm",
    "save_pruned",
]
