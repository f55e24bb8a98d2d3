"""One adapter per timm architecture family, behind a registry keyed by family name.

An adapter says only what differs between families (heads, ignored layers, custom pruning functions,
attributes to repair after removal); the removal mechanism itself is shared (``rmtdeploy.pruning``).
"""

from rmtdeploy.adapters.base import ADAPTERS, ArchitectureAdapter, find_adapter, get_adapter, register_adapter

__all__ = ["ADAPTERS", "ArchitectureAdapter", "find_adapter", "get_adapter", "register_adapter"]
