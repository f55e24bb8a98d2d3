"""ResNet (BasicBlock and Bottleneck): timm's ``ResNet``.

The residual groups (every block of a stage shares the stage's stream width with the downsample branch) are
found by torch-pruning's dependency graph on its own; what is left is the cached final width.
"""

from __future__ import annotations

from torch import nn

from rmtdeploy.adapters._model_attributes import sync_model_widths
from rmtdeploy.adapters.base import ArchitectureAdapter, register_adapter


@register_adapter("resnet")
class ResNetAdapter(ArchitectureAdapter):
    family = "resnet"

    def repair(self, model: nn.Module) -> None:
        # feature_info names the stem activation and the four stages; each one's width is the width of the
        # last BatchNorm feeding it (for a stage: any norm closing a residual branch of its last block).
        widths = {"act1": model.bn1.num_features}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            widths[name] = _last_batchnorm(getattr(model, name)[-1]).num_features
        stage_widths = [widths.get(info["module"], info["num_chs"]) for info in model.feature_info]
        sync_model_widths(model, stage_widths, num_features=widths["layer4"])


def _last_batchnorm(module: nn.Module) -> nn.modules.batchnorm._BatchNorm:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][-1]
