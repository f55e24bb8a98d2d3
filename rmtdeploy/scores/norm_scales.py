"""How normalisation layers rescale each Linear/Conv's channels in the function the network computes.

A weight matrix alone misjudges a channel when a norm layer sits next to it:

* Conv → BatchNorm (ResNet): output channel c leaves as γ_c/√(var_c + ε) · (W x)_c, so a channel with
  large weights and a small BN scale carries little; the **row scale** is γ/√(var + ε).
* LayerNorm → Linear (ViT, Swin, Hiera, ConvNeXt's MLP): input channel c enters as γ_c · x̂_c, so the
  **column scale** of the consuming layer is the LayerNorm's γ.
* Linear → LayerScale (``gamma`` after an MLP or attention output): a row scale, as for BatchNorm. A
  block that keeps its layer scale as a bare ``gamma`` parameter (timm's ConvNeXt) scales the rows of the
  last Linear/Conv it calls.

The pairs are found by running the model once and reading the order its leaf modules are called in
(skipping Identity / Dropout / DropPath / activations), so no family needs its own rule.
"""

from __future__ import annotations

import torch
from torch import nn

_TRANSPARENT = (nn.Identity, nn.Dropout, nn.ReLU, nn.GELU, nn.SiLU, nn.ReLU6, nn.Hardswish)
_WEIGHTED = (nn.Linear, nn.Conv2d)


def _is_transparent(module: nn.Module) -> bool:
    # timm's DropPath and DropBlock are identity at eval time; activations do not rescale channels.
    return isinstance(module, _TRANSPARENT) or type(module).__name__ in ("DropPath", "DropBlock2d")


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _in_width(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


@torch.no_grad()
def norm_channel_scales(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {"rows": scale, "cols": scale}}`` for every Linear/Conv2d a norm layer rescales."""
    names = {module: name for name, module in model.named_modules()}
    order: list[nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda m, _i, _o: order.append(m))
        for module in model.modules()
        if not list(module.children()) and not _is_transparent(module)
    ]
    was_training = model.training
    model.eval()
    try:
        model(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    scales: dict[str, dict[str, torch.Tensor]] = {}
    for holder in model.modules():
        gamma = holder._parameters.get("gamma")
        called = set(holder.modules())
        last = [m for m in order if m in called and isinstance(m, _WEIGHTED)]
        if gamma is not None and gamma.ndim == 1 and last and _out_width(last[-1]) == len(gamma):
            scales.setdefault(names[last[-1]], {})["rows"] = gamma.detach().float().abs()
    for before, after in zip(order, order[1:], strict=False):
        if isinstance(before, _WEIGHTED) and getattr(before, "groups", 1) == 1:
            row = _output_scale(after, _out_width(before))
            if row is not None:
                scales.setdefault(names[before], {})["rows"] = row
        if isinstance(after, _WEIGHTED) and getattr(after, "groups", 1) == 1:
            col = _input_scale(before, _in_width(after))
            if col is not None:
                scales.setdefault(names[after], {})["cols"] = col
    return scales


def _output_scale(module: nn.Module, width: int) -> torch.Tensor | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features == width:
        gamma = module.weight if module.affine else torch.ones(width)
        return (gamma / (module.running_var + module.eps).sqrt()).detach().float().abs()
    gamma = getattr(module, "gamma", None)  # timm's LayerScale / LayerScale2d
    if isinstance(gamma, torch.Tensor) and gamma.ndim == 1 and len(gamma) == width:
        return gamma.detach().float().abs()
    return None


def _input_scale(module: nn.Module, width: int) -> torch.Tensor | None:
    if isinstance(module, nn.LayerNorm) and module.weight is not None and module.weight.numel() == width:
        return module.weight.detach().float().abs()
    return None
