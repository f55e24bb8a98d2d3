"""INT8: post-training static quantization of an exported graph into a Q/DQ ONNX.

Q/DQ (QuantizeLinear/DequantizeLinear pairs around each quantized op) is the form both consumers take:
ONNX Runtime fuses the pairs into integer kernels, and TensorRT reads the scales from them (TensorRT 10
with the INT8 builder flag, TensorRT 11 strongly typed, where the precision must be in the ONNX).
Choices, and why:

* **onnxruntime.quantization** (already a dependency) over NVIDIA ModelOpt: ModelOpt's ``onnx`` extra
  replaces the CPU onnxruntime with onnxruntime-gpu and adds cupy-cuda12x and an older onnx, and its
  graphs were no more accurate here (docs/deploy.md, "INT8 for TensorRT: Q/DQ placement").
* **Activations per backend.** TensorRT takes only symmetric int8 (zero point 0) for activations and
  weights; ONNX Runtime's x86 integer kernels are fastest with uint8 activations and int8 weights (U8S8,
  onnxruntime's own advice), and S8S8 graphs ran slower than fp32 on the AMD EPYC here
  (benchmarks/results/int8_accuracy.md). ``backend`` picks: "tensorrt" S8S8 symmetric, "onnxruntime"
  U8S8 (asymmetric activations).
* **Per-channel weights**: a pruned layer's channels keep their own range.
* **Only the GEMM-like ops** (Conv, MatMul, Gemm) get Q/DQ on their inputs by default: that is where
  int8 pays, it is the placement TensorRT's guidance asks for, and quantizing LayerNorm, Softmax or
  residual Adds costs accuracy for little speed. For TensorRT their outputs get none either (its
  placement guidance; the graph's logits stay float).
* **Calibration on real images** (the train split of ``--data``; a built-in real set when none is
  given, and the result says so), MinMax by default; ``percentile`` / ``entropy`` on request.

What runs in int8 and what stays in float is counted from the graph (an op whose input comes out of a
DequantizeLinear runs on quantized data) and reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import atomic_save

CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INT8_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Result:
    """What was quantized, on what, and which ops stay in float; ``to_dict`` is JSON-ready."""

    path: Path
    calibration: str  # the data source's name
    calibration_images: int
    method: str
    per_channel: bool
    activations: str  # "int8 symmetric" (TensorRT) or "uint8 asymmetric" (ONNX Runtime)
    int8_ops: dict[str, int]  # op type -> count of quantized ops (Q/DQ on their inputs)
    float_ops: dict[str, int]  # op type -> count of compute ops left in float
    file_bytes: int
    quantize_s: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def quantize_int8(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    batches: Iterable[np.ndarray],
    *,
    calibration: str,
    method: str = "minmax",
    per_channel: bool = True,
    op_types: tuple[str, ...] = INT8_OPS,
    backend: str = "onnxruntime",
    overwrite: bool = False,
) -> Int8Result:
    """Quantize the ONNX file ``fp32_path`` into a Q/DQ ``out`` calibrated on ``batches`` (float32 NCHW
    arrays shaped like the graph's input). ``out`` appears only once ONNX Runtime loads it."""
    from onnxruntime import quantization as q

    out = _check_quantize_arguments(method, Path(out), overwrite, backend)
    tensorrt = backend == "tensorrt"
    reader = _Reader(fp32_path, batches)
    started = time.perf_counter()

    def build(tmp: str) -> None:
        with tempfile.TemporaryDirectory(prefix="rmtdeploy-int8-") as work:
            prepared = Path(work) / "prepared.onnx"
            with warnings.catch_warnings(), contextlib.redirect_stdout(None), _quiet_logging():
                warnings.simplefilter("ignore")
                # Shape inference + ORT's basic optimisations first, as onnxruntime recommends for PTQ.
                q.shape_inference.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
                q.quantize_static(
                    str(prepared), tmp, reader, quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                    op_types_to_quantize=list(op_types),
                    activation_type=q.QuantType.QInt8 if tensorrt else q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[method]),
                    # TensorRT's parser refuses an int32 bias behind DequantizeLinear ("only activation
                    # types allowed as input to this layer"): biases stay float for it. Nor does it want
                    # Q/DQ on a weighted op's output (it splits Conv + residual Add; docs/deploy.md).
                    extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True,
                                   "QuantizeBias": not tensorrt,
                                   "OpTypesToExcludeOutputQuantization": list(op_types) if tensorrt else []},
                )  # fmt: skip
        _carry_metadata(fp32_path, tmp, {"rmtdeploy.precision": "int8", "rmtdeploy.int8_calibration":
                        f"{calibration}, {reader.images} images, {method}, per-channel {per_channel}, {backend} form"})  # fmt: skip
        _check_loads(tmp)

    try:
        atomic_save(out, build)
    except RmtdeployError:
        raise
    except Exception as exc:
        raise RmtdeployError(f"INT8 quantization failed: {str(exc).splitlines()[0][:240]}") from exc
    if reader.images == 0:
        raise RmtdeployError("no calibration images were read")
    int8_ops, float_ops = op_precisions(out, op_types)
    activations = "int8 symmetric" if tensorrt else "uint8 asymmetric"
    return Int8Result(out, calibration, reader.images, method, per_channel, activations, int8_ops, float_ops,
                      out.stat().st_size, round(time.perf_counter() - started, 2))  # fmt: skip


def _check_quantize_arguments(method: str, out: Path, overwrite: bool, backend: str) -> Path:
    if method not in CALIBRATION_METHODS:
        raise RmtdeployError(f"{{param}} must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'",
                             param="calibration_method")  # fmt: skip
    if out.exists() and not overwrite:
        raise RmtdeployError(f"{out} already exists; pass --force (overwrite=True) to replace it")
    if backend not in ("onnxruntime", "tensorrt"):
        raise RmtdeployError(f"backend must be onnxruntime or tensorrt, got '{backend}'")
    return out


# Ops that carry the arithmetic; layout and bookkeeping ops (Reshape, Transpose, Shape, ...) are not
# counted as "kept in float" since they move data without computing on it.
COMPUTE_OPS = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Sub", "Div", "Softmax", "LayerNormalization",
               "BatchNormalization", "Relu", "Gelu", "Erf", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "GlobalAveragePool", "AveragePool", "MaxPool", "ReduceMean", "Pow", "Sqrt", "Einsum"}  # fmt: skip


def op_precisions(
    path: str | os.PathLike, op_types: tuple[str, ...] = INT8_OPS
) -> tuple[dict[str, int], dict[str, int]]:
    """(``op_types`` op -> count fed by DequantizeLinear: the integer kernels, other compute op -> count:
    what stays in float). A residual Add between two quantized tensors still adds in float."""
    import onnx

    graph = onnx.load(os.fspath(path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8, floats = Counter(), Counter()
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        if node.op_type not in COMPUTE_OPS:
            continue
        if node.op_type in op_types and any(i in dequantized for i in node.input):
            int8[node.op_type] += 1
        else:
            floats[node.op_type] += 1
    return dict(sorted(int8.items())), dict(sorted(floats.items()))


def classify(path: str | os.PathLike, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Predicted classes of an ONNX classifier over (images, labels) batches, on the CPU."""
    from rmtdeploy.onnx_session import cpu_session

    session = cpu_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0].argmax(1) for x, _ in batches])


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our batches, counting the images it fed."""

    def __init__(self, fp32_path, batches: Iterable[np.ndarray]):
        import onnx

        self.name = onnx.load(os.fspath(fp32_path), load_external_data=False).graph.input[0].name
        self.batches = iter(batches)
        self.images = 0

    def get_next(self):
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.images += len(batch)
        return {self.name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):  # the protocol has it; calibration reads once
        return None


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization logs through the root logger (one warning per LayerNorm weight)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _carry_metadata(source, target: str, extra: dict[str, str]) -> None:
    """The fp32 file's metadata (what an app needs) on the INT8 file, plus how it was quantized."""
    import onnx

    from rmtdeploy.exporting.onnx_file import set_metadata

    model = onnx.load(target)
    set_metadata(
        model, {p.key: p.value for p in onnx.load(os.fspath(source), load_external_data=False).metadata_props}
    )
    set_metadata(model, extra)
    onnx.save(model, target)


def _check_loads(path: str) -> None:
    from rmtdeploy.onnx_session import cpu_session

    cpu_session(path)
