"""Where the time goes: ONNX Runtime's per-node profile, grouped by op type or by top-level block."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from rmtdeploy.benchmark.protocol import check_counts
from rmtdeploy.benchmark.runners.onnxruntime_cpu import check_onnx_models, time_onnx
from rmtdeploy.errors import RmtdeployError

GROUPS = ("op_type", "scope")
_KERNEL_SUFFIX = "_kernel_time"


def profile_onnx_ops(
    models: Mapping[str, str | os.PathLike],
    *,
    group_by: str = "op_type",
    batch: int = 1,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 20,
    input_shape: Sequence[int] | None = None,
    thread_pool: str = "shared",
) -> dict[str, dict[str, float]]:
    """Kernel time per run (ms, fastest run) for each label, grouped, largest first.

    ``group_by="op_type"`` sums by ONNX op type as ONNX Runtime runs the graph after its fusions
    (``FusedConv``, ``FusedMatMul``, ...); ``group_by="scope"`` sums by the top-level block the exporter
    named each node after (:func:`onnx_node_scope`: ``/blocks/blocks.3/attn/qkv/Gemm`` -> ``blocks.3``).
    It answers why pruning that cut MACs did not cut latency as much (layout ops that do not shrink,
    blocks whose kernels run at low efficiency).
    The models are run interleaved, like :func:`rmtdeploy.benchmark.measure_onnx_latency` (same
    ``thread_pool`` choice), so they see the same load.
    """
    if group_by not in GROUPS:
        raise RmtdeployError(f"group_by must be 'op_type' or 'scope', got '{group_by}'")
    traces, warmup = profile_traces(models, batch=batch, threads=threads, warmup=warmup, runs=runs,
                                    input_shape=input_shape, thread_pool=thread_pool)  # fmt: skip
    return {label: group_profile(events, group_by, warmup, runs) for label, events in traces.items()}


def profile_traces(
    models: Mapping[str, str | os.PathLike],
    *,
    batch: int = 1,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 20,
    input_shape: Sequence[int] | None = None,
    thread_pool: str = "shared",
) -> tuple[dict[str, list[dict]], int]:
    """ONNX Runtime's profiler events per label over ``warmup`` + ``runs`` interleaved runs."""
    check_counts(models, batch, threads, warmup, runs)
    thread_pool = check_onnx_models(models, thread_pool)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-ortprof-") as tmp:
        timed = time_onnx(
            models,
            thread_pool=thread_pool,
            threads=threads,
            batch=batch,
            input_shape=input_shape,
            warmup=warmup,
            runs=runs,
            interleave=True,
            seed=0,
            allow_spinning=False,
            profile_dir=tmp,
        )
        traces = {label: json.loads(Path(f).read_text("utf-8")) for label, f in timed["traces"].items()}
    return traces, warmup


def group_profile(events: list[dict], group_by: str, warmup: int, runs: int) -> dict[str, float]:
    """ms per run for each op type or scope of one ORT profiler trace, largest first.

    The profiler records every run since the session was created, in order, and each key occurs the
    same number of times per run: the warm-up runs are dropped and each timed run summed. Then the
    fastest run per key is taken: on a shared machine preemption only ever adds time to a kernel, and a
    block's share is tiny next to a whole inference, so a median still carries other processes' bursts.
    """
    if group_by == "op_type":
        return group_profile_events(events, None, warmup, runs)
    return group_profile_events(events, onnx_node_scope, warmup, runs)


def group_profile_events(
    events: list[dict], key_of: Callable[[str], str] | None, warmup: int, runs: int
) -> dict[str, float]:
    """:func:`group_profile` with any grouping: ``key_of(node name)``, or None for the op type."""
    per_key: dict[str, list[float]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        if key_of is None:
            key = event.get("args", {}).get("op_name", "?")
        else:
            key = key_of(name[: -len(_KERNEL_SUFFIX)])
        per_key.setdefault(key, []).append(float(event.get("dur", 0.0)))
    result: dict[str, float] = {}
    for key, durations in per_key.items():
        per_run = len(durations) // (warmup + runs)
        timed = np.asarray(durations[per_run * warmup : per_run * (warmup + runs)]).reshape(runs, per_run)
        result[key] = float(timed.sum(axis=1).min()) / 1e3
    return dict(sorted(result.items(), key=lambda kv: -kv[1]))


def onnx_node_scope(node_name: str) -> str:
    """Top-level block a node belongs to, from the exporter's scope path in its name.

    ``/blocks/blocks.1/attn/qkv/MatMul`` -> ``blocks.1``; ``/layer2/layer2.2/conv1/Conv`` -> ``layer2.2``;
    ``/blocks.3/mlp/fc1/MatMul`` -> ``blocks.3``; ``/Add`` -> ``(top)``; a name ORT made up -> ``(unscoped)``.
    Matches :func:`rmtdeploy.macs.module_scope` for PyTorch module names.
    """
    if not node_name.startswith("/"):
        return "(unscoped)"
    parts = node_name.split("/")[1:-1]  # drop the op's own name
    if not parts:
        return "(top)"
    if len(parts) > 1 and parts[1].startswith(parts[0] + "."):
        return parts[1]  # a container's child: the exporter repeats the full dotted name
    return parts[0]
