"""One adapter per timm architecture family, behind a registry keyed by family name.

An adapter says only what differs between families (heads, ignored layers, custom pruning functions,
attributes to repair after removal, the variants it cannot prune); the removal mechanism itself is shared
(``rmtdeploy.pruning``). The registry (``registry.py``) imports no adapter; every adapter module registers
itself with ``@register_adapter`` and is imported here, so the registry is complete once this package is.
"""

from rmtdeploy.adapters import (  # noqa: F401  (they register)
    byobnet,
    convnext,
    edgenext,
    eva,
    fastvit,
    generic,
    hiera,
    levit,
    metaformer,
    resnet,
    swin,
    swin_v2,
    tiny_vit,
    vit,
)
from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.adapters.registry import ADAPTERS, find_adapter, get_adapter, register_adapter

__all__ = ["ADAPTERS", "ArchitectureAdapter", "find_adapter", "get_adapter", "register_adapter"]
