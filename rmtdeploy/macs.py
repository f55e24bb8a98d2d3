"""MACs counted by module, and the top-level block a module belongs to: the one MAC view that pruning
(latency-aware components), benchmarks (per-block speedup) and reports share.

The counter is torch-pruning's (the budget's own); scopes match the ONNX exporter's node names
(:func:`rmtdeploy.benchmark.profile.onnx_node_scope`), so MACs and profiled time line up per block.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when MACs are counted: importing rmtdeploy.benchmark stays light
    import torch
    from torch import nn


def module_scope(model: nn.Module, module_name: str) -> str:
    """Top-level block of a PyTorch module name, the same key the ONNX profile gives its nodes."""
    from torch import nn

    parts = module_name.split(".")
    child = getattr(model, parts[0], None)
    if len(parts) > 1 and isinstance(child, (nn.Sequential, nn.ModuleList)):
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def scope_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs per top-level block (same keys as the ONNX profile's scopes), from leaf modules only."""
    return macs_by_key(model, example, lambda name: module_scope(model, name))


def count_ops(model: nn.Module, example: torch.Tensor, layer_wise: bool = False):
    """torch-pruning's ``count_ops_and_params`` (the budget's unit everywhere), mended where it miscounts:
    - every subclass of a layer it counts (the adapters' ``GatedLinear`` and ``HeadRowsLinear``, timm's
      ``Conv2dSame``) counts as that layer: the counter picks its hook by exact type, and counted them as 0;
    - a linear layer whose weight a parent multiplies with ``F.linear`` counts as the layer's call;
    - timm's ``Attention`` and ``WindowAttention`` count their output projection by its own shape."""
    import torch
    import torch_pruning as tp
    from torch import nn
    from torch_pruning.utils import op_counter

    hooks = op_counter.MODULES_MAPPING
    subclasses = {}  # a hook for each type the counter's exact-type lookup misses or gets wrong
    for kind in {type(module) for module in model.modules()}:
        hook = next((hooks[base] for base in kind.__mro__ if base in hooks), None)
        if hook is op_counter.timm_multihead_attention_counter_hook:
            subclasses[kind] = _timm_attention_macs
        elif hook is not None and kind not in hooks:
            subclasses[kind] = hook
    op_counter.CUSTOM_MODULES_MAPPING = subclasses  # read while the hooks are placed, reset by the call
    with torch.no_grad():
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            model, example, layer_wise=True
        )
        counted = subclasses | hooks
        whole = [m for m in model.modules() if type(m) in counted and next(m.children(), None) is not None]
        inside_whole = {id(sub) for module in whole for sub in module.modules() if sub is not module}
        uncalled = (m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside_whole)
        if any(not layer_macs.get(m) for m in uncalled):  # a second pass only where a layer went unseen
            for module, extra in _functional_linear_macs(model, example).items():
                layer_macs[module] = (layer_macs.get(module) or 0) + extra
                macs += extra
    if layer_wise:
        return macs, params, layer_macs, layer_params
    return macs, params


def _timm_attention_macs(attention: nn.Module, inputs: tuple, output) -> None:
    """torch-pruning's count of a timm ``Attention`` / ``WindowAttention`` (it counts them whole), with the
    output projection counted by its own shape: the library takes it as square in the qkv width, which holds
    for a dense model but undercounts it once heads or head dimensions are cut and the stream is not."""
    from torch import nn
    from torch_pruning.utils import op_counter

    op_counter.timm_multihead_attention_counter_hook(attention, inputs, output)
    proj = getattr(attention, "proj", None)
    if isinstance(proj, nn.Linear):
        batch, tokens = inputs[0].shape[0], inputs[0].shape[1]
        width = attention.qkv.out_features // 3
        square = tokens * width * (width + 1)
        own = tokens * proj.out_features * (proj.in_features + 1)
        attention.__flops__ += int(batch * (own - square))


def _functional_linear_macs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """MACs of linear layers whose weight a parent multiplies with ``F.linear`` instead of calling the layer:
    timm's Eva, BEiT and SwinV2 attentions do so for ``qkv`` to add their separate q and v biases, and the
    module hooks never see it (SwinV2-T and EVA02-Ti counted a quarter short). Counted by torch-pruning's
    linear formula."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    linears = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}
    running: set[int] = set()
    found: Counter[nn.Module] = Counter()
    hooks = []
    for module in linears.values():
        hooks.append(module.register_forward_pre_hook(lambda m, _: running.add(id(m))))
        hooks.append(module.register_forward_hook(lambda m, _i, _o: running.discard(id(m))))
    original = F.linear

    def counted_linear(input, weight, bias=None):
        owner = linears.get(id(weight))
        if owner is not None and id(owner) not in running:
            found[owner] += int(
                input.numel() * weight.shape[0] + (weight.shape[0] if bias is not None else 0)
            )
        return original(input, weight, bias)

    F.linear = counted_linear
    training = model.training
    try:
        with torch.no_grad():
            model.eval()  # as torch-pruning's pass: batch-norm statistics stay as they are
            model(example)
    finally:
        F.linear = original
        model.train(training)
        for hook in hooks:
            hook.remove()
    return dict(found)


def macs_by_key(model: nn.Module, example: torch.Tensor, key_of) -> dict[str, int]:
    """MACs (torch-pruning's counter, the budget's own) summed by ``key_of(module name)``.

    Each MAC is counted once, at the deepest module the counter reports: a leaf layer, or a module it
    counts whole (timm's Attention: qkv, the q·kᵀ and attn·v products and proj, its children unreported).
    """
    _, _, layer_macs, _ = count_ops(model, example, layer_wise=True)
    names = {module: name for name, module in model.named_modules()}
    totals: Counter[str] = Counter()
    for module, macs in layer_macs.items():
        counted_below = any(layer_macs.get(sub) is not None for sub in module.modules() if sub is not module)
        if macs and not counted_below and module in names:
            totals[key_of(names[module])] += int(macs)
    return dict(totals)
