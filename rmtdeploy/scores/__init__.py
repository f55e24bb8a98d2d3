"""Stage 2 — scores: pruning strategies as importance plug-ins, by CLI name.

``get_strategy("rmt").prune(model, keep_macs=0.5)`` → ``rmtdeploy.pruning.PruneResult``.
"""

from rmtdeploy.scores.base import STRATEGIES, PrunerSettings, Strategy, get_strategy, register_strategy


def strategy_names() -> list[str]:
    from rmtdeploy.scores.base import _import_builtin_strategies

    _import_builtin_strategies()
    return sorted(STRATEGIES)


__all__ = ["STRATEGIES", "PrunerSettings", "Strategy", "get_strategy", "register_strategy", "strategy_names"]
