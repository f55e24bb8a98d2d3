"""One-layer ONNX graphs: a Linear or a convolution alone at its real input shape, at any (input, output)
width, for the latency table's layer grids (:mod:`rmtdeploy.benchmark.latency_table`).

The graphs are written with ``onnx.helper`` (no export, milliseconds each) in the form the exporter gives
the layer: ``MatMul`` + ``Add`` for a Linear (its input's leading dims flattened into the rows of one GEMM),
``Conv`` with the layer's kernel, stride, padding and dilation. Weights are random: time does not depend
on their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

OPSET = 17


@dataclass(frozen=True)
class LayerShape:
    """What a one-layer graph needs besides its two widths."""

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


def write_layer_graph(
    shape: LayerShape, in_width: int, out_width: int, path: str | Path, seed: int = 0
) -> None:
    """``shape``'s layer with ``in_width`` inputs and ``out_width`` outputs as an ONNX file at ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if shape.op == "linear":
        dims = [*shape.input_shape[:-1], in_width]
        out_dims = [*dims[:-1], out_width]
        weight = rng.standard_normal((in_width, out_width), dtype=np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y0" if shape.bias else "y"])]
    else:
        dims = [shape.input_shape[0], in_width, *shape.input_shape[2:]]
        out_dims = [shape.input_shape[0], out_width, *_conv_output(shape)]
        weight = rng.standard_normal((out_width, in_width, *shape.kernel), dtype=np.float32)
        pads = [*shape.padding, *shape.padding]
        inputs = ["x", "w", "b"] if shape.bias else ["x", "w"]
        nodes = [helper.make_node("Conv", inputs, ["y"], kernel_shape=list(shape.kernel), strides=list(shape.stride),
                                  pads=pads, dilations=list(shape.dilation))]  # fmt: skip
    initializers = [numpy_helper.from_array(weight, "w")]
    if shape.bias:
        initializers.append(numpy_helper.from_array(rng.standard_normal(out_width, dtype=np.float32), "b"))
        if shape.op == "linear":
            nodes.append(helper.make_node("Add", ["y0", "b"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _conv_output(shape: LayerShape) -> list[int]:
    """A convolution's output spatial size."""
    return [
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, k, stride, pad, dil in zip(
            shape.input_shape[2:], shape.kernel, shape.stride, shape.padding, shape.dilation, strict=True
        )
    ]
