"""ONNX Runtime on the CPU: the runner timing CPU sessions.

:func:`rmtdeploy.onnx_session.cpu_session` serves the runner, the op profiler
(:mod:`rmtdeploy.benchmark.profile`) and the export check (:mod:`rmtdeploy.exporting`), so a graph is
verified, profiled and timed as it will run.
:func:`time_onnx` times on ONNX Runtime's shared thread pool in a child process
(:mod:`rmtdeploy.benchmark.isolation`), or on per-session pools in this one; docs/benchmarks.md says
why the shared pool is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rmtdeploy.benchmark.isolation import in_child_process
from rmtdeploy.benchmark.protocol import run_rounds
from rmtdeploy.benchmark.runners.base import DEFAULT_INPUT_SHAPE, Runner
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.onnx_session import GRAPH_OPTIMIZATION, cpu_session, create_shared_pool

THREAD_POOLS = ("shared", "per-session")


class OrtCpuRunner(Runner):
    """ONNX models (``.onnx`` paths or ready ``InferenceSession`` objects) on ORT's CPU provider."""

    backend = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        *,
        threads: int,
        batch: int = 1,
        input_shape: Sequence[int] | None = None,
        seed: int = 0,
        thread_pool: str = "per-session",
        allow_spinning: bool = False,
        profile_dir: str | None = None,
    ):
        self.threads, self.batch, self.input_shape = threads, batch, input_shape
        self.thread_pool, self.allow_spinning, self.profile_dir = thread_pool, allow_spinning, profile_dir
        self.sessions: dict[str, Any] = {}
        self.input_shapes: dict[str, list[int]] = {}
        self._rng = np.random.default_rng(seed)

    @property
    def shared(self) -> bool:
        return self.thread_pool == "shared"

    def bind(self, label: str, model: Any) -> Callable[[], object]:
        if is_session(model):
            sess = model  # the caller's own session, timed with the settings it was built with
        else:
            prefix = f"{self.profile_dir}/p{len(self.sessions)}" if self.profile_dir else None
            sess = cpu_session(
                model,
                threads=self.threads,
                allow_spinning=self.allow_spinning,
                shared_pool=self.shared,
                profile_prefix=prefix,
            )
        meta = sess.get_inputs()[0]
        shape = concrete_shape(meta.shape, self.batch, self.input_shape, label)
        feed = {meta.name: self._rng.standard_normal(shape, dtype=np.float32)}
        self.sessions[label], self.input_shapes[label] = sess, shape
        return partial(sess.run, None, feed)

    def conditions(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "onnxruntime_version": ort.__version__,
            "providers": {label: list(sess.get_providers()) for label, sess in self.sessions.items()},
            # A session on the shared pool reports 0 threads of its own: give the pool's size instead.
            "intra_op_threads": {
                label: self.threads if self.shared else sess.get_session_options().intra_op_num_threads
                for label, sess in self.sessions.items()
            },
            "graph_optimization": GRAPH_OPTIMIZATION,
            "thread_pool": self.thread_pool,
            "allow_spinning": True if self.shared else self.allow_spinning,  # the shared pool: ORT's default
            "input_shapes": dict(self.input_shapes),
        }

    def end_profiling(self) -> dict[str, str]:
        """Trace file per label, when the runner was given a ``profile_dir``."""
        if not self.profile_dir:
            return {}
        return {label: sess.end_profiling() for label, sess in self.sessions.items()}


def check_onnx_models(models: Mapping[str, Any], thread_pool: str) -> str:
    """Refuse what :func:`time_onnx` cannot run; return the thread pool actually used.

    Ready sessions cannot travel to the shared pool's child process: alone, they are timed in this
    process as they are (``"caller's sessions"``); mixed with paths, the request is refused.
    """
    if thread_pool not in THREAD_POOLS:
        raise RmtdeployError(f"thread_pool must be one of {', '.join(THREAD_POOLS)}, got '{thread_pool}'")
    ready = [label for label, item in models.items() if is_session(item)]
    for label, item in models.items():
        if not is_session(item) and not Path(item).is_file():
            raise RmtdeployError(f"ONNX model '{label}' not found: {item}")
    if ready and thread_pool == "shared":
        if len(ready) < len(models):
            raise RmtdeployError(
                "thread_pool='shared' needs .onnx paths (it builds its sessions in a child process); "
                "pass paths only, or use thread_pool='per-session'"
            )
        return "caller's sessions"
    return thread_pool


def time_onnx(models: Mapping[str, Any], *, thread_pool: str, **settings: Any) -> dict:
    """:func:`time_onnx_models` in a child process for the shared pool, else in this process."""
    if thread_pool == "shared":
        paths = {label: str(path) for label, path in models.items()}
        return in_child_process(time_onnx_models, models=paths, thread_pool=thread_pool, **settings)
    return time_onnx_models(models=models, thread_pool=thread_pool, **settings)


def time_onnx_models(
    *,
    models: Mapping[str, Any],
    threads: int,
    batch: int,
    input_shape: Sequence[int] | None,
    warmup: int,
    runs: int,
    interleave: bool,
    seed: int,
    thread_pool: str,
    allow_spinning: bool,
    profile_dir: str | None = None,
) -> dict:
    """Bind ``models`` on an :class:`OrtCpuRunner` and time them: samples, conditions, profiler traces.

    Plain data in and out (given paths), so it runs in a child process as well as here.
    """
    if thread_pool == "shared":
        create_shared_pool(threads)
    runner = OrtCpuRunner(
        threads=threads,
        batch=batch,
        input_shape=input_shape,
        seed=seed,
        thread_pool=thread_pool,
        allow_spinning=allow_spinning,
        profile_dir=profile_dir,
    )
    samples, conditions = run_rounds(runner, models, warmup=warmup, runs=runs, interleave=interleave)
    return {
        "samples_ms": {label: values.tolist() for label, values in samples.items()},
        "conditions": conditions,
        "traces": runner.end_profiling(),
    }


def is_session(item: Any) -> bool:
    return hasattr(item, "run") and hasattr(item, "get_inputs")


def concrete_shape(
    graph_shape: Sequence[int | str | None], batch: int, input_shape: Sequence[int] | None, label: str
) -> list[int]:
    """Replace the graph's symbolic dims: dim 0 by ``batch``, the others by ``input_shape``."""
    fallback = list(input_shape) if input_shape is not None else list(DEFAULT_INPUT_SHAPE)
    shape: list[int] = []
    for i, dim in enumerate(graph_shape):
        if i == 0:
            if isinstance(dim, int) and dim != batch:
                raise RmtdeployError(
                    f"'{label}' was exported with a static batch of {dim}, asked for {batch}"
                )
            shape.append(batch)
        elif isinstance(dim, int):
            if input_shape is not None and i - 1 < len(fallback) and fallback[i - 1] != dim:
                raise RmtdeployError(
                    f"'{label}' has a static input dim {i} of {dim}, asked for input shape {tuple(input_shape)}"
                )
            shape.append(dim)
        elif i - 1 < len(fallback):
            shape.append(int(fallback[i - 1]))
        else:
            raise RmtdeployError(f"'{label}' has a dynamic input dim {i}; pass input_shape")
    return shape
