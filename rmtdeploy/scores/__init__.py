"""Stage 2 — scores: pruning strategies as importance plug-ins, by CLI name.

``get_strategy("rmt").prune(model, keep_macs=0.5)`` → ``rmtdeploy.pruning.PruneResult``.

The registry (``registry.py``) imports no strategy; every strategy module registers itself with
``@register_strategy`` and is imported here, so the registry is complete once this package is imported.
"""

from rmtdeploy.scores import (  # noqa: F401  (they register)
    data_rmt,
    dynamic,
    edge_budget,
    hybrid,
    magnitude,
    rmt,
)
from rmtdeploy.scores.base import PrunerSettings, Strategy
from rmtdeploy.scores.registry import STRATEGIES, get_strategy, register_strategy, strategy_names

__all__ = ["STRATEGIES", "PrunerSettings", "Strategy", "get_strategy", "register_strategy", "strategy_names"]
