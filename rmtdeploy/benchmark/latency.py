"""Latency entry points: one per runner, each checks its request, times and returns a report."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rmtdeploy.benchmark.protocol import check_counts, check_pairs, measure, protocol_conditions, run_rounds
from rmtdeploy.benchmark.runners.base import DEFAULT_INPUT_SHAPE
from rmtdeploy.benchmark.runners.onnxruntime_cpu import OrtCpuRunner, check_onnx_models, time_onnx
from rmtdeploy.benchmark.runners.pytorch import TorchRunner
from rmtdeploy.benchmark.stats import LatencyReport
from rmtdeploy.errors import RmtdeployError

# A copy of the first model, created and timed first and then dropped. In early A/A runs here (a model
# against its own copy, interleaved, one shared pool, AMD EPYC) the session created first ran 1-5 % slower
# than an identical one created later; the latency table's groups run behind one. Measured again on an idle
# machine (benchmarks/results/onnx_pilot.md) the offset was 0.6 % without a pilot and 0-1.3 % with one, so
# it is not the default.
PILOT = "pilot (dropped)"


def measure_onnx_latency(
    models: Mapping[str, str | os.PathLike | Any],
    *,
    batch: int = 1,
    threads: int = 2,
    warmup: int = 10,
    runs: int = 50,
    interleave: bool = True,
    input_shape: Sequence[int] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    thread_pool: str = "shared",
    allow_spinning: bool = False,
    seed: int = 0,
    pilot: bool = False,
) -> LatencyReport:
    """Time ONNX models with ONNX Runtime's CPU provider, one ``session.run`` per sample.

    ``models`` maps a label to an ``.onnx`` path or a ready ``onnxruntime.InferenceSession`` (timed in
    this process with its own settings). ``pairs`` lists ``(baseline, candidate)`` labels to report
    speedups for; by default the first model is the baseline for every other one. ``input_shape``
    (C, H, W) fills the non-batch dims the graph leaves dynamic; static dims come from the graph.

    ``thread_pool="shared"`` (paths only) times all models on one ORT process-wide pool of ``threads``
    workers with ORT's default spinning, in a spawned child process: ORT sizes that pool once per
    process and then refuses every session with its own threads, so it must not leak into the caller.
    ``"per-session"`` gives each session its own pool in this process, with spinning off unless
    ``allow_spinning`` (spinning sessions disturb each other when interleaved). docs/benchmarks.md
    explains the protocol and why the shared pool is the default.

    ``pilot`` (paths only): a copy of the first model is created first, timed with the rest and dropped
    (:data:`PILOT`: the first session created runs slower).
    """
    check_counts(models, batch, threads, warmup, runs)
    thread_pool = check_onnx_models(models, thread_pool)
    labels = list(models)
    check_pairs(labels, pairs)
    if PILOT in labels:
        raise RmtdeployError(f"'{PILOT}' is the pilot's label; name the model otherwise")
    conditions = protocol_conditions(
        OrtCpuRunner, batch=batch, threads=threads, warmup=warmup, runs=runs, interleave=interleave
    )
    timed_models = dict(models)
    if pilot and thread_pool != "caller's sessions":
        timed_models = {PILOT: models[labels[0]], **models}
        conditions["pilot"] = f"a copy of '{labels[0]}' created and timed first, then dropped"

    def time_models() -> dict[str, np.ndarray]:
        timed = time_onnx(
            timed_models,
            thread_pool=thread_pool,
            threads=threads,
            batch=batch,
            input_shape=input_shape,
            warmup=warmup,
            runs=runs,
            interleave=interleave,
            seed=seed,
            allow_spinning=allow_spinning,
        )
        conditions.update({key: _without_pilot(value) for key, value in timed["conditions"].items()})
        return {label: np.asarray(timed["samples_ms"][label]) for label in labels}

    return measure(labels, time_models, pairs=pairs, interleave=interleave, conditions=conditions)


def _without_pilot(value: Any) -> Any:
    """A per-model condition ({label: ...}) without the pilot's entry; any other value as it is."""
    return {k: v for k, v in value.items() if k != PILOT} if isinstance(value, dict) else value


def measure_torch_latency(
    models: Mapping[str, Any],
    *,
    batch: int = 1,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 30,
    interleave: bool = True,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    pairs: Sequence[tuple[str, str]] | None = None,
    seed: int = 0,
    device: str = "cpu",
    compile_mode: str | None = None,
    precision: str = "fp32",
    cuda_graph: bool = False,
) -> LatencyReport:
    """Time in-memory PyTorch modules (eval mode, ``inference_mode``), same protocol as ONNX.

    ``device`` "cpu" or "cuda"; ``compile_mode`` runs them through ``torch.compile`` (compiled before
    the timing; ``"reduce-overhead"`` uses CUDA graphs on a GPU); ``cuda_graph`` captures the eager
    forward in a CUDA graph instead (no compilation); ``precision`` "fp16" is CUDA only.
    ``torch.set_num_threads`` is process-wide, so it is restored afterwards, as are each module's mode
    and device.
    """
    check_counts(models, batch, threads, warmup, runs)
    labels = list(models)
    check_pairs(labels, pairs)
    runner = TorchRunner(threads=threads, batch=batch, input_shape=input_shape, seed=seed, device=device,
                         compile_mode=compile_mode, precision=precision, cuda_graph=cuda_graph)  # fmt: skip
    return _measure_on(
        runner, models, threads=threads, warmup=warmup, runs=runs, interleave=interleave, pairs=pairs
    )


def measure_tensorrt_latency(
    engines: Mapping[str, Any],
    *,
    batch: int = 1,
    warmup: int = 10,
    runs: int = 100,
    interleave: bool = True,
    pairs: Sequence[tuple[str, str]] | None = None,
    precision: str | None = None,
) -> LatencyReport:
    """Time TensorRT engines (``.engine`` paths or serialized bytes) on the CUDA GPU, same protocol as the
    other backends; one ``execute_async_v3`` + stream synchronise per sample. ``precision`` is recorded."""
    from rmtdeploy.benchmark.runners.tensorrt import TensorRTRunner

    check_counts(engines, batch, 1, warmup, runs)
    labels = list(engines)
    check_pairs(labels, pairs)
    runner = TensorRTRunner(batch=batch, precision=precision)
    return _measure_on(
        runner, engines, threads=1, warmup=warmup, runs=runs, interleave=interleave, pairs=pairs
    )


def _measure_on(runner, models: Mapping[str, Any], *, threads: int, warmup: int, runs: int, interleave: bool,
                pairs) -> LatencyReport:  # fmt: skip
    """The protocol around a runner that binds in this process (every backend but ORT's shared pool)."""
    conditions = protocol_conditions(
        runner, batch=runner.batch, threads=threads, warmup=warmup, runs=runs, interleave=interleave
    )

    def time_models() -> dict[str, np.ndarray]:
        samples, runner_conditions = run_rounds(
            runner, models, warmup=warmup, runs=runs, interleave=interleave
        )
        conditions.update(runner_conditions)
        return samples

    return measure(list(models), time_models, pairs=pairs, interleave=interleave, conditions=conditions)
