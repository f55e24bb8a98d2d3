"""fp16 copies of exported graphs, for TensorRT 11's strongly typed builds (no FP16 builder flag: the
graph's types are the engine's).

:func:`fp16_copy` converts with ONNX Runtime's float16 converter, inputs and outputs kept fp32, and a
block list of ops kept in fp32 (:data:`FP32_OPS`); a Q/DQ graph keeps its int8 parts and gets fp16
float parts and fp16 scales (opset 19), each scale checked to survive the conversion. Its agreement
with the fp32 graph on real images is measured for every family in ``tests/test_fp16_graphs.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import atomic_save

# Ops an fp16 copy keeps in fp32: reductions, powers, exponentials and the normalisations built on them
# overflow fp16 (max 65504) first. NVIDIA's TensorRT 11 migration notes ask for such a block list (or
# ModelOpt's AutoCast, which decides from the data). A node between kept ones stays fp32 with them (the
# Div and Add of a decomposed norm), and kept nodes pass fp32 to each other, never through fp16.
FP32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "LogSoftmax",
            "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Exp", "Log",
            "Sqrt", "Reciprocal")  # fmt: skip
QDQ_FP16_OPSET = 19  # ONNX allows fp16 Q/DQ scales (and data) from opset 19


def fp16_copy(
    source: str | os.PathLike, destination: str | os.PathLike, *, keep_fp32: Sequence[str] = FP32_OPS
) -> Path:
    """An fp16 copy of a graph, inputs and outputs kept fp32 and the ``keep_fp32`` ops in fp32: TensorRT
    11 builds strongly typed networks, so a graph's precision is the engine's (no FP16 builder flag).

    A Q/DQ graph keeps its int8 parts and gets fp16 float parts: its scales become fp16 too (what
    ModelOpt's fp16 mode emits; ONNX needs opset 19 for them, so the copy is converted to it). The
    weights behind each DequantizeLinear are requantized to their fp16 scale (within half a step of the
    fp32 graph's weight) and every other scale must keep its value; one that cannot is an error, never
    a silently different quantization."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    scales = _qdq_scales(model.graph)
    if scales:
        model = _at_least_opset(model, QDQ_FP16_OPSET)
    blocked_nodes = _fp32_nodes(model.graph, {*DEFAULT_OP_BLOCK_LIST, *keep_fp32})
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                     node_block_list=sorted(blocked_nodes))  # fmt: skip
    _skip_fp16_round_trips(model.graph)
    _sort_topologically(model.graph)  # the converter appends its Casts at the end; ONNX wants them in order
    if scales:
        _keep_scales_right(model.graph, scales)
    atomic_save(Path(destination), lambda tmp: onnx.save(model, str(tmp)))
    return Path(destination)


def _qdq_scales(graph) -> dict[str, np.ndarray]:
    """The Q/DQ scale initializers of ``graph`` by name, as float64 arrays."""
    from onnx import numpy_helper

    names = {
        n.input[1]
        for n in graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1
    }
    return {i.name: numpy_helper.to_array(i).astype(np.float64) for i in graph.initializer if i.name in names}


def _keep_scales_right(graph, before: dict[str, np.ndarray]) -> None:
    """After the fp16 conversion: requantize each constant (weight) behind a DequantizeLinear to its now
    fp16 scale, so ``scale * q`` stays the fp32 graph's weight within half a step (a per-channel weight
    scale is often below fp16's smallest normal, 6.1e-5, where fp16 keeps fewer bits); check that every
    activation scale kept its value (relative error <= 2^-10). Raises when a scale cannot survive."""
    from onnx import numpy_helper

    after = _qdq_scales(graph)
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    requantized = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or node.input[1] not in after:
            continue
        q_init = inits[node.input[0]]
        q = numpy_helper.to_array(q_init)
        if q.dtype not in (np.int8, np.int32) or uses.get(q_init.name, 0) != 1:
            continue
        old, new = before[node.input[1]], after[node.input[1]]
        if not np.all(np.isfinite(new)) or np.any(new <= 0):
            raise RmtdeployError(
                f"Q/DQ scale {node.input[1]} underflows fp16: this graph cannot get fp16 float parts"
            )
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q_new, new = _requantized(q, old, new, axis, node.input[1])
        if new is not None:  # the scale was moved up to the next fp16 value
            scale_init = inits[node.input[1]]
            scale_init.CopyFrom(
                numpy_helper.from_array(new.astype(np.float16).reshape(old.shape), scale_init.name)
            )
        q_init.CopyFrom(numpy_helper.from_array(q_new, q_init.name))
        requantized.add(node.input[1])
    for name, old in before.items():
        if name in requantized or name not in after:
            continue
        new = after[name]
        error = np.abs(new - old) / old
        if not np.all(np.isfinite(new)) or np.any(new <= 0) or error.max() > 2.0**-10:
            raise RmtdeployError(
                f"Q/DQ scale {name} does not survive fp16 (smallest {old.min():.3g}, relative error "
                f"{error.max():.2g}): this graph cannot get fp16 float parts"
            )


def _requantized(q: np.ndarray, old: np.ndarray, new: np.ndarray, axis: int, name: str):
    """``q`` requantized from its fp32 ``old`` scale to the fp16 ``new`` one, and the scale moved up when fp16
    rounded it down (else None). Raises when a weight would move by more than a step of the fp32 graph
    (or, for a near-dead channel, more than fp16's resolution of the tensor's largest weight)."""
    shape = [1] * q.ndim
    if old.ndim == 1 and old.size > 1:
        shape[axis % q.ndim] = old.size
    # A scale fp16 rounded down would need |q| past the int range: take the next fp16 value up instead,
    # so requantized values never clip (a near-dead channel's tiny scale becomes fp16's smallest step).
    below = new < old
    moved = None
    if np.any(below):
        new = moved = np.where(below, np.nextafter(new.astype(np.float16), np.float16(np.inf)), new).astype(
            np.float64
        )
    old_s, new_s = old.reshape(shape), new.reshape(shape)
    limit = np.iinfo(q.dtype).max if q.dtype == np.int32 else 127  # symmetric int8 stays in [-127, 127]
    q_new = np.clip(np.rint(q * old_s / new_s), -limit, limit).astype(q.dtype)
    error = np.abs(q_new * new_s - q * old_s)
    if np.any(error > np.maximum(old_s, 2.0**-11 * np.abs(q * old_s).max())):
        raise RmtdeployError(
            f"Q/DQ scale {name} does not survive fp16 ({(error / old_s).max():.2f} steps off): this graph "
            "cannot get fp16 float parts"
        )
    return q_new, moved


def _at_least_opset(model, opset: int):
    """``model`` converted to ``opset`` of the default domain when below it (ONNX's version converter)."""
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001 (the converter raises its own C++ error types)
        raise RmtdeployError(
            f"cannot convert the graph to opset {opset} for fp16 Q/DQ: {str(exc)[:200]}"
        ) from exc


def _fp32_nodes(graph, ops: set[str]) -> set[str]:
    """Names of the nodes to keep fp32: those of the ``ops`` types, then, until nothing changes, every node
    whose float inputs all come from kept nodes or constants and whose outputs all go to kept nodes (the
    Add of ``var + eps``, the Div of a decomposed norm). Unnamed nodes get names first."""
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}_rmtdeploy"
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kept = {n.name for n in graph.node if n.op_type in ops}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.name in kept or node.op_type in ("Cast", "QuantizeLinear", "DequantizeLinear"):
                continue
            sources = [producer.get(i) for i in node.input if i and i not in constants]
            sinks = [c for out in node.output for c in consumers.get(out, [])]
            if (
                sources
                and sinks
                and all(p is not None and p.name in kept for p in sources)
                and all(c.name in kept for c in sinks)
            ):
                kept.add(node.name)
                changed = True
    return kept


def _skip_fp16_round_trips(graph) -> None:
    """ONNX Runtime's converter casts every kept node's output to fp16 and back for the next kept node:
    ``x (fp32) -> Cast(fp16) -> Cast(fp32) -> next``. Rewire ``next`` to ``x`` so kept chains stay fp32
    (a variance of 1e5 would otherwise pass through fp16 as inf); casts left unused are removed."""
    import onnx

    producer = {out: node for node in graph.node for out in node.output}
    cast_to = {node.name: next((a.i for a in node.attribute if a.name == "to"), None) for node in graph.node}
    rewired = {}
    for node in graph.node:
        if node.op_type != "Cast" or cast_to[node.name] != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is not None and first.op_type == "Cast" and cast_to[first.name] == onnx.TensorProto.FLOAT16:
            rewired[node.output[0]] = first.input[0]
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rewired and name not in outputs:
                node.input[i] = rewired[name]
    used = {name for node in graph.node for name in node.input} | outputs
    dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
    while dead:
        for node in dead:
            graph.node.remove(node)
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]


def _sort_topologically(graph) -> None:
    """Order ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output}
    nodes = list(graph.node)
    done: set[int] = set()
    order: list[int] = []

    def visit(index: int) -> None:
        stack = [(index, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(i)
                continue
            stack.append((i, True))
            for name in reversed(nodes[i].input):
                j = produced_by.get(name)
                if j is not None and j not in done:
                    stack.append((j, False))

    for index in range(len(nodes)):
        visit(index)
    graph.ClearField("node")
    graph.node.extend(nodes[i] for i in order)
