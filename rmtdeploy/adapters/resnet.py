"""ResNet (BasicBlock and Bottleneck): timm's ``ResNet``.

The residual groups (every block of a stage shares the stage's stream width with the downsample branch) are
found by torch-pruning's dependency graph on its own; what is left is the cached final width.

timm builds many variants on the same ``ResNet`` class (``resnet.py``, ``sknet.py``). Those whose extra
layers the graph cannot follow are refused up front (``check_supported``); the ResNet-D/-T stems,
squeeze-excite blocks, ResNeXt groups, average-pool anti-aliasing and selective kernels over the whole
input (``skresnext50_32x4d``) prune as they are.
"""

from __future__ import annotations

from timm.layers import BlurPool2d, CecaModule, EcaModule, SelectiveKernel
from torch import nn

from rmtdeploy.adapters._model_attributes import sync_model_widths
from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.adapters.registry import register_adapter

BLUR_POOL_REASON = (
    "blur-pool anti-aliasing (BlurPool2d: resnetblur*, mobilenetv4_conv_blur_*) keeps a filter "
    "per channel outside any layer the dependency graph prunes"
)


@register_adapter("resnet")
class ResNetAdapter(ArchitectureAdapter):
    family = "resnet"
    unsupported_layers = {
        EcaModule: "efficient channel attention (ECA, the eca* variants) mixes neighbouring channels with "
        "a 1-D convolution across them, which the dependency graph cannot follow",
        CecaModule: "circular efficient channel attention mixes neighbouring channels with a 1-D "
        "convolution across them, which the dependency graph cannot follow",
        BlurPool2d: BLUR_POOL_REASON,
        nn.GroupNorm: "GroupNorm (the *_gn variants) normalises channels in fixed groups; removing channels "
        "would regroup the ones that stay",
    }

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, SelectiveKernel) and module.split_input:
            return (
                "selective-kernel convolutions that split their input between paths (skresnet18/34/50, "
                "split_input=True): the split is invisible to the dependency graph"
            )
        return super().unsupported_reason(module)

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
