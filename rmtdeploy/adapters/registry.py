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


def register_adapter(*families: str):
    """Class decorator: ``@register_adapter("vit", "deit")`` makes the adapter serve those families."""

    def wrap(cls):
        for family in families:
            ADAPTERS[family] = cls
        return cls

    return wrap


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of ``model``'s family, once it has checked that it can prune this model.

    RmtdeployError for a model outside every family, or of a family whose adapter refuses it (a variant
    built from blocks the adapter cannot prune, see ``ArchitectureAdapter.check_supported``)."""
    family = model_family(model)
    if family not in ADAPTERS:
        known = ", ".join(sorted(ADAPTERS))
        raise RmtdeployError(
            f"no pruning adapter for {type(model).__name__} (family '{family}'); known: {known}"
        )
    adapter = ADAPTERS[family]()
    adapter.check_supported(model)
    return adapter


def find_adapter(model: nn.Module) -> ArchitectureAdapter | None:
    """The model's adapter, or None for a model no adapter serves (stages that work without one).

    No support check: these stages (export, data transforms) read only what every model of the family
    has, so a variant the adapter cannot prune is still served."""
    adapter = ADAPTERS.get(model_family(model))
    return adapter() if adapter is not None else None
