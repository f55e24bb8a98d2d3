"""fp16 copies for TensorRT 11's strongly typed builds: overflow-prone ops stay fp32, Q/DQ graphs keep
their quantization, and every family's fp16 graph agrees with its fp32 graph on real images (ONNX Runtime).

The six families run with random weights (timm models built here: no hub, and no trained model of each
family is cached); the images are MNIST-5k's validation split (``rmtdeploy.data``). ConvNeXt (LayerNorm,
GELU) runs in ``make test``; the others are ``slow``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rmtdeploy.coverage import FAMILY_MODELS
from rmtdeploy.data import builtin_loader
from rmtdeploy.exporting import export_onnx
from rmtdeploy.exporting.fp16 import fp16_copy
from rmtdeploy.exporting.onnx_file import float_precision, graph_precision

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options)


def _decomposed_norm_graph(path):
    """x -> (x - mean) / sqrt(mean((x - mean)^2) + eps) -> MatMul: a norm written out, as exporters do."""
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
             helper.make_node("Sub", ["x", "mean"], ["centred"]),
             helper.make_node("Pow", ["centred", "two"], ["squared"]),
             helper.make_node("ReduceMean", ["squared", "axes"], ["var"], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var_eps"], ["std"]),
             helper.make_node("Div", ["centred", "std"], ["normed"], name="norm_div"),
             helper.make_node("MatMul", ["normed", "w"], ["y"])]  # fmt: skip
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"), numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.float32(1e-5), "eps"),
             numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32), "w")]  # fmt: skip
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], inits)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_overflow_prone_ops_stay_fp32_in_an_fp16_copy(tmp_path):
    # Before: every op went fp16; (x - mean)^2 of activations ~400 overflows fp16's 65504 -> inf, and the
    # norm's output collapses to 0. ONNX's reference evaluator runs fp16 ops in fp16, as TensorRT does
    # (ONNX Runtime's CPU provider quietly upcasts fp16 ops it has no kernel for, hiding the overflow).
    from onnx.reference import ReferenceEvaluator

    _decomposed_norm_graph(tmp_path / "norm.onnx")
    half = fp16_copy(tmp_path / "norm.onnx", tmp_path / "norm.fp16.onnx")
    onnx.checker.check_model(onnx.load(str(half)), full_check=True)  # typed and topologically sorted
    assert float_precision(half) == "fp16"
    x = (np.random.default_rng(1).standard_normal((1, 4, 64)) * 400).astype(np.float32)
    want, got, everything = (
        ReferenceEvaluator(str(p)).run(None, {"x": x})[0]
        for p in (
            tmp_path / "norm.onnx",
            half,
            fp16_copy(tmp_path / "norm.onnx", tmp_path / "all.onnx", keep_fp32=()),
        )
    )
    assert np.abs(got - want).max() < 0.01 * np.abs(want).max()
    assert np.abs(everything - want).max() > 0.5 * np.abs(want).max()  # what the block list prevents


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)
        with torch.no_grad():
            self.conv2.weight[3] *= 1e-3  # one channel's per-channel scale falls below fp16's smallest normal

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_a_qdq_graph_gets_fp16_float_parts_and_keeps_its_quantization(tmp_path):
    from rmtdeploy.engine.target_build import tensorrt_qdq_problem
    from rmtdeploy.exporting.int8 import quantize_int8

    export_onnx(_TinyNet().eval(), tmp_path / "m.onnx", input_shape=(3, 32, 32), batch=1, overwrite=True)
    images = [
        x.numpy() for x, _ in builtin_loader("mnist5k", "train", image_size=32, batch_size=1, max_images=16)
    ]
    quantize_int8(
        tmp_path / "m.onnx", tmp_path / "q.onnx", iter(images), calibration="mnist5k", backend="tensorrt"
    )
    half = fp16_copy(tmp_path / "q.onnx", tmp_path / "q.fp16.onnx")
    model = onnx.load(str(half))
    assert graph_precision(half) == "int8" and float_precision(half) == "fp16"
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19  # fp16 scales
    assert tensorrt_qdq_problem(model.graph) is None  # still TensorRT's form: symmetric int8, float biases
    val = [x.numpy() for x, _ in builtin_loader("mnist5k", "val", image_size=32, batch_size=1, max_images=32)]
    a, b = (
        np.concatenate([_session(p).run(None, {"input": x})[0] for x in val])
        for p in (tmp_path / "q.onnx", half)
    )
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95 and np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_a_near_dead_channel_whose_scale_fp16_rounds_down_is_requantized_not_refused(tmp_path):
    # A pruned, trained network keeps channels with tiny weights: their per-channel scale is fp16-subnormal,
    # and rounded to nearest it can fall below the fp32 scale, where requantizing would need |q| > 127.
    scales = np.array([8.9e-8, 0.02], dtype=np.float32)  # 8.9e-8 rounds down to fp16's 5.96e-8
    weights = np.array([[120, -90, 60, 30], [100, -50, 25, 127]], dtype=np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
        helper.make_node("Gemm", ["xd", "wd"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sx"), numpy_helper.from_array(np.array(0, np.int8), "zx"),
             numpy_helper.from_array(weights, "w"), numpy_helper.from_array(scales, "sw"),
             numpy_helper.from_array(np.zeros(2, np.int8), "zw")]  # fmt: skip
    graph = helper.make_graph(nodes, "near_dead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "q.onnx")
    half = fp16_copy(tmp_path / "q.onnx", tmp_path / "q.fp16.onnx")  # raised "does not survive fp16" before
    x = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    a, b = (_session(p).run(None, {"x": x})[0] for p in (tmp_path / "q.onnx", half))
    assert np.abs(a - b).max() <= 2e-3 * np.abs(a).max()


FAMILIES = [pytest.param(f, marks=[] if f == "convnext" else [pytest.mark.slow]) for f in FAMILY_MODELS]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_fp16_graph_agrees_with_fp32_on_real_images(tmp_path, family):
    model = FAMILY_MODELS[family].build()
    model.reset_classifier(10)
    torch.manual_seed(0)
    heads = model.get_classifier()  # DeiT distilled has two
    for head in heads if isinstance(heads, tuple) else (heads,):
        torch.nn.init.normal_(head.weight, std=0.02)  # Hiera's head starts at zero
    export_onnx(model.eval(), tmp_path / "m.onnx", target="jetson-orin-nano", overwrite=True)
    half = fp16_copy(tmp_path / "m.onnx", tmp_path / "m.fp16.onnx")
    images = [
        x.numpy() for x, _ in builtin_loader("mnist5k", "val", model=model, batch_size=1, max_images=32)
    ]
    a, b = (
        np.concatenate([_session(p).run(None, {"input": x})[0] for x in images])
        for p in (tmp_path / "m.onnx", half)
    )
    assert float_precision(half) == "fp16" and np.isfinite(b).all()
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95 and np.abs(a - b).max() < 0.01 * np.abs(a).max()
