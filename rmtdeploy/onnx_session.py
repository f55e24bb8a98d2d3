"""The one place that sets up an ONNX Runtime CPU session: export's check, the op profiler and the
benchmark runner all run a graph as it will run (full graph optimisations, one op at a time)."""

from __future__ import annotations

import os
from pathlib import Path

from rmtdeploy.errors import RmtdeployError

GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"


def cpu_session(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    allow_spinning: bool = False,
    shared_pool: bool = False,
    profile_prefix: str | None = None,
):
    """An ``InferenceSession`` on the CPU provider with ORT's full graph optimisations (fusions included).

    ``threads`` sizes the session's own intra-op pool (one op at a time, spinning as
    ``allow_spinning`` says); ``None`` keeps ORT's defaults. ``shared_pool`` runs it on the process's
    shared pool instead (:func:`create_shared_pool` first). ``profile_prefix`` turns on ORT's profiler.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RmtdeployError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    # One op at a time: inter-op parallelism would use more cores than ``threads`` says.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
    if shared_pool:
        opts.use_per_session_threads = False
    elif threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RmtdeployError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}") from exc


def create_shared_pool(threads: int) -> None:
    """Create ORT's process-wide intra-op pool (only ever called in a fresh child process)."""
    from onnxruntime.capi import _pybind_state as ort_c

    try:
        ort_c.set_global_thread_pool_sizes(threads, 1)
    except Exception as exc:
        raise RmtdeployError(
            f"cannot create ONNX Runtime's shared thread pool ({str(exc).splitlines()[0][:160]}); "
            "use thread_pool='per-session'"
        ) from exc
