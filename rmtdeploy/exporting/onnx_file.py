"""The exported graph as a file: its simplification, its metadata entries, saving it checked, and the
precision it carries (what a strongly typed TensorRT build of it would run)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError

# Graph simplifiers; onnxslim is the default on the measurements in docs/export.md
# (benchmarks/onnx_simplifiers.py).
SIMPLIFIERS = ("onnxslim", "onnxsim")
DEFAULT_SIMPLIFIER = "onnxslim"


def check_simplifier(simplify: bool | str) -> str | None:
    if simplify is True:
        return DEFAULT_SIMPLIFIER
    if simplify is False or simplify is None:
        return None
    if simplify not in SIMPLIFIERS:
        raise RmtdeployError(f"simplify must be one of {', '.join(SIMPLIFIERS)} or False, got '{simplify}'")
    return simplify


def simplify_graph(proto, simplifier: str) -> tuple[Any, str, bool]:
    """The simplified graph when the simplifier is installed and succeeds; otherwise the graph as
    exported, with the reason."""
    try:
        module = __import__(simplifier)
    except ImportError:
        return proto, f"{simplifier} not installed", False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            if simplifier == "onnxslim":
                slim = module.slim(proto)
            else:
                slim, valid = module.simplify(proto)
                slim = slim if valid else None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"{simplifier} failed ({reason}); keeping the unsimplified graph", stacklevel=3)
        return proto, f"{simplifier} failed: {reason}", False
    if slim is None:  # older onnxslim returns None when it declines a model; onnxsim's own check failed
        return proto, f"{simplifier} returned no valid model", False
    return slim, f"{simplifier} {getattr(module, '__version__', '?')}", True


def set_metadata(proto, entries: Mapping[str, str]) -> None:
    """Set (or replace) ``metadata_props`` entries; every value is a string, as ONNX requires."""
    props = {p.key: p for p in proto.metadata_props}
    for key, value in entries.items():
        prop = props.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, str(value)


def default_domain_opset(proto) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def save_checked(proto, tmp: str) -> None:
    import onnx

    try:
        onnx.save(proto, tmp)
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise RmtdeployError(
            f"ONNX model too large for one file ({exc}); external-data export is not supported"
        ) from exc
    try:
        onnx.checker.check_model(tmp)
    except Exception as exc:
        raise RmtdeployError(f"exported ONNX graph is invalid: {str(exc).splitlines()[0][:240]}") from exc


def graph_precision(path: str | os.PathLike) -> str:
    """``int8`` (Q/DQ nodes), ``fp16`` (most weight values fp16) or ``fp32``: what a strongly typed
    TensorRT build of this graph would run."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(node.op_type == "QuantizeLinear" for node in graph.node):
        return "int8"
    return _float_bulk(graph)


def float_precision(path: str | os.PathLike) -> str:
    """``fp16`` or ``fp32``: the precision of the graph's float parts, Q/DQ graphs included (their int8
    weights are not float; their float parts are what TensorRT 11 runs outside the int8 kernels)."""
    import onnx

    return _float_bulk(onnx.load(str(path), load_external_data=False).graph)


def _float_bulk(graph) -> str:
    import onnx

    counts = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for init in graph.initializer:
        if init.data_type in counts:
            counts[init.data_type] += int(np.prod(init.dims)) if init.dims else 1
    # The converter leaves a few small fp32 constants (blocked ops' inputs): judge by the bulk.
    return "fp16" if counts[onnx.TensorProto.FLOAT16] > counts[onnx.TensorProto.FLOAT] else "fp32"
