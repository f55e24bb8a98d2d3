"""ConvNeXt (v1 and v2): timm's ``ConvNeXt``.

What differs from a plain CNN: the per-block layer scale is a bare parameter ``ConvNeXtBlock.gamma``
(shape ``(C,)``, applied as ``x * gamma.reshape(1, -1, 1, 1)``), v2's GlobalResponseNorm holds bare
``weight``/``bias`` of shape ``(C,)``, and the model and its ``NormMlpClassifierHead`` cache the final width.
``LayerNorm2d`` subclasses ``nn.LayerNorm`` and is pruned by torch-pruning's LayerNorm pruner as is.
"""

from __future__ import annotations

from timm.layers.grn import GlobalResponseNorm
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from rmtdeploy.adapters._model_attributes import sync_model_widths
from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("convnext")
class ConvNeXtAdapter(ArchitectureAdapter):
    family = "convnext"

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        params: list[tuple[nn.Parameter, int]] = []
        for module in model.modules():
            if isinstance(module, ConvNeXtBlock) and module.gamma is not None:
                params.append((module.gamma, 0))
            elif isinstance(module, GlobalResponseNorm):
                params += [(module.weight, 0), (module.bias, 0)]
        return params

    def repair(self, model: nn.Module) -> None:
        # A stage's width: its last block's depthwise conv sees every residual channel.
        stage_widths = [stage.blocks[-1].conv_dw.out_channels for stage in model.stages]
        sync_model_widths(model, stage_widths, num_features=stage_widths[-1])
