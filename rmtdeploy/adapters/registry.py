"""The adapter registry: timm family name -> adapter class. Imports no adapter.

Each adapter module registers itself with ``@register_adapter("family", ...)``;
``rmtdeploy/adapters/__init__.py`` imports every built-in one, so ``from rmtdeploy.adapters import
get_adapter`` always sees them all (as timm's ``_registry.py`` and ``timm/models/__init__.py`` do for models).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import model_family

if TYPE_CHECKING:
    from rmtdeploy.adapters.base import ArchitectureAdapter

ADAPTERS: dict[str, type[ArchitectureAdapter]] = {}
# The adapter of timm models whose family has none (at most one; ``rmtdeploy.adapters.generic``).
_FALLBACK: list[type[ArchitectureAdapter]] = []


def register_adapter(*families: str):
    """Class decorator: ``@register_adapter("vit", "deit")`` makes the adapter serve those families."""

    def wrap(cls):
        for family in families:
            ADAPTERS[family] = cls
        return cls

    return wrap


def register_fallback_adapter(cls):
    """Class decorator: the adapter of every timm model whose family no adapter serves."""
    _FALLBACK[:] = [cls]
    return cls


def _adapter_class(model: nn.Module) -> type[ArchitectureAdapter] | None:
    family = model_family(model)
    if family in ADAPTERS:
        return ADAPTERS[family]
    # A timm model of another family (model_family names its timm file); "other" is not a timm model.
    return _FALLBACK[0] if _FALLBACK and family != "other" else None


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of ``model``'s family (the fallback one for other timm models), once it has checked
    that it can prune this model.

    RmtdeployError for a model that is not a timm model of a known family, or that its adapter refuses (a
    variant built from blocks the adapter cannot prune, see ``ArchitectureAdapter.check_supported``)."""
    cls = _adapter_class(model)
    if cls is None:
        known = ", ".join(sorted(ADAPTERS))
        raise RmtdeployError(
            f"no pruning adapter for {type(model).__name__} (family '{model_family(model)}'); known: "
            f"{known}, and any other timm model through the generic adapter"
        )
    adapter = cls()
    adapter.check_supported(model)
    return adapter


def find_adapter(model: nn.Module) -> ArchitectureAdapter | None:
    """The model's adapter, or None for a model no adapter serves (stages that work without one).

    No support check: these stages (export, data transforms) read only what every model of the family
    has, so a variant the adapter cannot prune is still served."""
    cls = _adapter_class(model)
    return cls() if cls is not None else None
