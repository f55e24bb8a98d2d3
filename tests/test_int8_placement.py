"""Where the INT8 export puts Q/DQ for TensorRT targets, against TensorRT's placement recommendations
(developer guide, "Explicit Quantization"): the inputs of Conv/MatMul/Gemm quantized and their outputs
not, so a Conv and the residual Add after it can fuse; biases float (the parser takes only int8/fp8/int4
into DequantizeLinear); graph outputs float; no LayerNorm or Softmax reading dequantized data. Checked on
a ResNet and a ViT graph calibrated on real images; ONNX Runtime's own form is left as it was.
benchmarks/int8_modelopt.py measures the same rules on trained models beside NVIDIA ModelOpt's graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import numpy_helper

from rmtdeploy.data import open_data
from rmtdeploy.exporting import export_onnx
from rmtdeploy.exporting.int8 import quantize_int8

pytestmark = pytest.mark.usefixtures("single_torch_thread")

WEIGHTED = {"Conv", "MatMul", "Gemm"}
MODELS = {
    "resnet": ("resnet18", {}),
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def quantized(request, tmp_path_factory):
    """One family's graph for a TensorRT target (its export form) quantized in both forms."""
    name, kwargs = MODELS[request.param]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    root = tmp_path_factory.mktemp(request.param)
    export_onnx(model, root / "m.onnx", target="gpu-int8")
    train = open_data("digits").dataset("train", model)
    images = np.stack([train[i][0].numpy() for i in range(32)])
    paths = {
        backend: quantize_int8(root / "m.onnx", root / f"m.{backend}.onnx", [images[:16], images[16:]],
                               calibration="digits", backend=backend).path
        for backend in ("tensorrt", "onnxruntime")
    }  # fmt: skip
    return request.param, {backend: onnx.load(path).graph for backend, path in paths.items()}


class Graph:
    def __init__(self, graph):
        self.graph = graph
        self.constants = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def made_by(self, name: str) -> str:
        node = self.producer.get(name)
        return node.op_type if node is not None else ""

    def after(self, node) -> list[str]:
        """A weighted op's output, and past a bias Add (a Linear's MatMul + Add) that one's output."""
        outputs = [node.output[0]]
        for user in self.consumers.get(node.output[0], []):
            if user.op_type == "Add" and any(i in self.constants for i in user.input):
                outputs.append(user.output[0])
        return outputs


def test_tensorrt_form_quantizes_the_inputs_of_weighted_ops_and_not_their_outputs(quantized):
    family, graphs = quantized
    g = Graph(graphs["tensorrt"])
    weighted = [n for n in g.graph.node if n.op_type in WEIGHTED]
    assert weighted and all(g.made_by(i) == "DequantizeLinear" for n in weighted for i in n.input[:2]), family
    quantized_outputs = [n.name for n in weighted
                         for out in g.after(n) for user in g.consumers.get(out, []) if user.op_type == "QuantizeLinear"]  # fmt: skip
    assert quantized_outputs == [], f"{family}: Q/DQ after {quantized_outputs[:3]}"
    # So no residual Add reads a weighted op's output through a Q/DQ pair (TensorRT could not fuse them).
    for add in (n for n in g.graph.node if n.op_type == "Add"):
        for name in add.input:
            if g.made_by(name) == "DequantizeLinear":
                source = g.producer[g.producer[name].input[0]]
                assert source.op_type != "QuantizeLinear" or g.made_by(source.input[0]) not in WEIGHTED


def test_tensorrt_form_keeps_biases_outputs_norms_and_softmax_in_float(quantized):
    family, graphs = quantized
    g = Graph(graphs["tensorrt"])
    dequantized_types = {g.constants[n.input[0]].data_type for n in g.graph.node
                         if n.op_type == "DequantizeLinear" and n.input[0] in g.constants}  # fmt: skip
    assert dequantized_types == {onnx.TensorProto.INT8}, family  # int8 weights only: no int32 bias
    assert all(g.made_by(o.name) != "DequantizeLinear" for o in g.graph.output), family
    norms = [n.name for n in g.graph.node
             if n.op_type in ("LayerNormalization", "Softmax") and g.made_by(n.input[0]) == "DequantizeLinear"]  # fmt: skip
    assert norms == [], family
    zero_points = [numpy_helper.to_array(g.constants[n.input[2]]) for n in g.graph.node
                   if n.op_type == "QuantizeLinear"]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points), family


def test_onnxruntime_form_keeps_uint8_activations_and_quantized_outputs(quantized):
    """ONNX Runtime fuses DQ -> Conv -> Q into its integer kernels: its form keeps the output Q/DQ."""
    family, graphs = quantized
    g = Graph(graphs["onnxruntime"])
    zero_points = {numpy_helper.to_array(g.constants[n.input[2]]).dtype
                   for n in g.graph.node if n.op_type == "QuantizeLinear"}  # fmt: skip
    assert zero_points == {np.dtype(np.uint8)}, family
    assert any(user.op_type == "QuantizeLinear" for n in g.graph.node if n.op_type in WEIGHTED
               for user in g.consumers.get(n.output[0], [])), family  # fmt: skip
