"""The strategy registry: CLI name -> strategy class. Imports no strategy.

Each strategy module registers itself with ``@register_strategy("name")``; ``rmtdeploy/scores/__init__.py``
imports every built-in one, so ``from rmtdeploy.scores import get_strategy`` always sees them all (as
timm's ``_registry.py`` and ``timm/models/__init__.py`` do for models).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rmtdeploy.errors import RmtdeployError

if TYPE_CHECKING:
    from rmtdeploy.scores.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str):
    """Class decorator: ``@register_strategy("rmt")`` serves the strategy under its CLI name."""

    def wrap(cls):
        if name in STRATEGIES and STRATEGIES[name] is not cls:
            raise ValueError(f"strategy name '{name}' is taken by {STRATEGIES[name].__qualname__}")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return wrap


def strategy_names() -> list[str]:
    return sorted(STRATEGIES)


def get_strategy(name: str, **knobs: Any) -> Strategy:
    """Build a registered strategy from knob values (typed and range-checked by the strategy itself).

    Unknown names and knobs are user errors that list the valid choices; so are values of the wrong type or
    out of range, before any model is loaded."""
    if name not in STRATEGIES:
        raise RmtdeployError(f"unknown strategy '{name}'; choose one of: {', '.join(strategy_names())}")
    cls = STRATEGIES[name]
    valid = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise RmtdeployError(
            f"strategy '{name}' has no knob {', '.join(unknown)}; knobs: {', '.join(valid) or 'none'}"
        )
    return cls(**knobs)
