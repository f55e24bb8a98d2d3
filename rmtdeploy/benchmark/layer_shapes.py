"""A Linear's or a convolution's shape facts at its real input: its MACs at any (input, output) width, for
the interactions of a latency table's layers between two units (:mod:`rmtdeploy.benchmark.latency_table_plan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class LayerShape:
    """What a layer's MACs need besides its two widths."""

    op: str  # "linear" or "conv"
    input_shape: tuple[int, ...]  # batch 1; the channel dim (last for a Linear, 1 for a conv) takes the width
    bias: bool
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    def macs(self, in_width: int, out_width: int) -> int:
        """Multiply-accumulates of the layer at these widths."""
        if self.op == "linear":
            return math.prod(self.input_shape[:-1]) * in_width * out_width
        spatial = math.prod(_conv_output(self)) * math.prod(self.kernel)
        return self.input_shape[0] * spatial * in_width * out_width

    def describe(self) -> dict[str, Any]:
        keys = ("op", "input_shape", "bias", "kernel", "stride", "padding", "dilation")
        return {k: list(v) if isinstance(v, tuple) else v for k in keys if (v := getattr(self, k)) != ()}


def layer_shape(module: nn.Module, input_shape: tuple[int, ...]) -> LayerShape | None:
    """The shape facts of a Linear or an ungrouped 2-D convolution (``None`` for anything else)."""
    if isinstance(module, nn.Linear):
        # Leading dims (batch, tokens, windows stacked in dim 0 by Swin) are one GEMM's rows: one batch of them.
        return LayerShape(
            "linear", (1, math.prod(input_shape[:-1]), input_shape[-1]), module.bias is not None
        )
    if (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and isinstance(module.padding, tuple)
        and input_shape[0] == 1
    ):
        return LayerShape(
            "conv", tuple(input_shape), module.bias is not None, tuple(module.kernel_size),
            tuple(module.stride), tuple(module.padding), tuple(module.dilation),
        )  # fmt: skip
    return None


def _conv_output(shape: LayerShape) -> list[int]:
    """A convolution's output spatial size."""
    return [
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, k, stride, pad, dil in zip(
            shape.input_shape[2:], shape.kernel, shape.stride, shape.padding, shape.dilation, strict=True
        )
    ]
