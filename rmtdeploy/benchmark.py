"""Benchmark stage: latency of exported (ONNX Runtime) or in-memory (PyTorch) models on the CPU.

Latency on a shared machine swings by up to 3x within minutes, so a single model's mean says little.
Two things make the numbers usable:

* **Interleaving.** Every round runs each model once, back to back, rotating which model goes first;
  slow phases of the machine then hit all models of a round alike.
* **Per-round ratios.** A speedup is the median over rounds of ``time(baseline) / time(candidate)``
  within the same round, not the ratio of two medians taken at different moments.
* **One shared ONNX Runtime thread pool** (``thread_pool="shared"``, the default). Each session
  normally owns worker threads that spin for a while after every op; interleaved sessions then steal
  each other's cores (vit_small 26.5 -> 49.7 ms here). Turning spinning off instead makes every op pay
  a thread wake-up, which smaller (pruned) graphs feel most: it cost 3-7% of the dense/pruned speedup
  here. A process-wide pool serves all sessions with ORT's default spinning, so interleaved numbers
  match a model running alone, as it does when deployed. ORT sizes that pool once per process and then
  refuses sessions with their own threads, so it lives in a short-lived child process.

Every report carries the conditions it was measured under (backend, providers, batch, threads, runs,
library versions, CPU model, load average) so no number travels without saying how it was obtained.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError

DEFAULT_INPUT_SHAPE = (3, 224, 224)
THREAD_POOLS = ("shared", "per-session")


@dataclass(frozen=True)
class LatencyStats:
    """Distribution of one model's per-run latency, in milliseconds."""

    label: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, label: str, samples_ms: np.ndarray) -> LatencyStats:
        q10, q25, q50, q75, q90 = np.percentile(samples_ms, [10, 25, 50, 75, 90])
        return cls(
            label=label,
            median_ms=float(q50),
            p10_ms=float(q10),
            p90_ms=float(q90),
            iqr_ms=float(q75 - q25),
            mean_ms=float(np.mean(samples_ms)),
            min_ms=float(np.min(samples_ms)),
            runs=int(samples_ms.size),
        )


@dataclass(frozen=True)
class SpeedupStats:
    """``baseline / candidate`` latency ratio over interleaved rounds (> 1: candidate is faster)."""

    baseline: str
    candidate: str
    median: float
    p10: float
    p90: float
    iqr: float
    pairs: int
    paired: bool  # False when the models were not interleaved: then ratios pair runs by index only

    @classmethod
    def from_samples(
        cls, baseline: str, candidate: str, base_ms: np.ndarray, cand_ms: np.ndarray, paired: bool
    ) -> SpeedupStats:
        ratios = base_ms / cand_ms
        q10, q25, q50, q75, q90 = np.percentile(ratios, [10, 25, 50, 75, 90])
        return cls(
            baseline=baseline,
            candidate=candidate,
            median=float(q50),
            p10=float(q10),
            p90=float(q90),
            iqr=float(q75 - q25),
            pairs=int(ratios.size),
            paired=paired,
        )


@dataclass
class LatencyReport:
    """Per-model latency, pairwise speedups and the measurement conditions; ``to_dict`` is JSON-ready."""

    models: dict[str, LatencyStats]
    speedups: list[SpeedupStats]
    conditions: dict[str, Any]
    samples_ms: dict[str, list[float]] = field(repr=False, default_factory=dict)

    def speedup(self, baseline: str, candidate: str, *, quietest: float | None = None) -> SpeedupStats:
        """Speedup of ``candidate`` over ``baseline`` from the stored interleaved samples.

        ``quietest`` (e.g. 0.25) keeps only that fraction of rounds with the smallest summed time over
        both models, i.e. the rounds other processes disturbed least. On a shared machine the ratio
        itself depends on contention (a contended core hurts the larger model's multi-threaded kernels
        more), so this estimates the ratio on an otherwise idle machine, next to the all-round median.
        """
        for label in (baseline, candidate):
            if label not in self.samples_ms:
                raise RmtdeployError(
                    f"no latency samples for '{label}'; measured: {', '.join(self.samples_ms)}"
                )
        base = np.asarray(self.samples_ms[baseline])
        cand = np.asarray(self.samples_ms[candidate])
        if quietest is not None:
            if not 0.0 < quietest <= 1.0:
                raise RmtdeployError(f"quietest must be a fraction in (0, 1], got {quietest}")
            keep = max(1, round(quietest * base.size))
            rounds = np.argsort(base + cand, kind="stable")[:keep]
            base, cand = base[rounds], cand[rounds]
        return SpeedupStats.from_samples(
            baseline, candidate, base, cand, paired=bool(self.conditions.get("interleave", False))
        )

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conditions": dict(self.conditions),
            "models": {label: asdict(stats) for label, stats in self.models.items()},
            "speedups": [asdict(s) for s in self.speedups],
        }
        if include_samples:
            out["samples_ms"] = {label: list(s) for label, s in self.samples_ms.items()}
        return out


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
    ``allow_spinning`` (spinning sessions disturb each other when interleaved).
    """
    _check_counts(models, batch, threads, warmup, runs)
    if thread_pool not in THREAD_POOLS:
        raise RmtdeployError(f"thread_pool must be one of {', '.join(THREAD_POOLS)}, got '{thread_pool}'")
    ready = {label: item for label, item in models.items() if _is_session(item)}
    paths = {label: str(item) for label, item in models.items() if not _is_session(item)}
    for label, path in paths.items():
        if not Path(path).is_file():
            raise RmtdeployError(f"ONNX model '{label}' not found: {path}")
    if ready and thread_pool == "shared":
        if paths:
            raise RmtdeployError(
                "thread_pool='shared' needs .onnx paths (it builds its sessions in a child process); "
                "pass paths only, or use thread_pool='per-session'"
            )
        thread_pool = "caller's sessions"
    spec = {
        "paths": paths,
        "threads": threads,
        "batch": batch,
        "input_shape": None if input_shape is None else list(input_shape),
        "warmup": warmup,
        "runs": runs,
        "interleave": interleave,
        "seed": seed,
        "thread_pool": thread_pool,
        "allow_spinning": allow_spinning,
        "profile_dir": None,
    }
    labels = list(models)
    _check_pairs(labels, pairs)
    conditions = _common_conditions(
        backend="onnxruntime", batch=batch, threads=threads, warmup=warmup, runs=runs, interleave=interleave
    )

    def time_models() -> dict[str, np.ndarray]:
        if thread_pool == "shared":
            timed = _in_child_process(_time_onnx_models, spec)
        else:
            timed = _time_onnx_models(spec, sessions=ready or None)
        conditions.update(
            onnxruntime_version=timed["onnxruntime_version"],
            providers=timed["providers"],
            intra_op_threads=timed["intra_op_threads"],
            graph_optimization="ORT_ENABLE_ALL",
            thread_pool=thread_pool,
            allow_spinning=True if thread_pool == "shared" else allow_spinning,
            input_shapes=timed["input_shapes"],
        )
        return {label: np.asarray(timed["samples_ms"][label]) for label in labels}

    return _measure(labels, time_models, pairs=pairs, interleave=interleave, conditions=conditions)


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
) -> LatencyReport:
    """Time in-memory PyTorch modules on the CPU (eval mode, ``inference_mode``), same protocol as ONNX.

    Useful as a sanity check before export; deployment numbers come from the exported graph.
    ``torch.set_num_threads`` is process-wide, so it is restored afterwards.
    """
    import torch

    _check_counts(models, batch, threads, warmup, runs)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=generator)
    runners: dict[str, Callable[[], object]] = {}
    was_training: dict[str, bool] = {}
    for label, module in models.items():
        was_training[label] = module.training
        module.eval()
        runners[label] = _bind_torch_run(module, x)

    conditions = _common_conditions(
        backend="torch", batch=batch, threads=threads, warmup=warmup, runs=runs, interleave=interleave
    )
    conditions.update(torch_version=torch.__version__, input_shapes={k: list(x.shape) for k in models})
    _check_pairs(list(models), pairs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return _measure(
                list(models),
                lambda: _timed_rounds(runners, warmup=warmup, runs=runs, interleave=interleave),
                pairs=pairs,
                interleave=interleave,
                conditions=conditions,
            )
    finally:
        torch.set_num_threads(previous)
        for label, module in models.items():
            module.train(was_training[label])


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
    """Where the time goes: kernel time per run (ms, fastest run) for each label, grouped, largest first.

    ``group_by="op_type"`` sums by ONNX op type as ONNX Runtime runs the graph after its fusions
    (``FusedConv``, ``FusedMatMul``, ...); ``group_by="scope"`` sums by the top-level block the exporter
    named each node after (:func:`onnx_node_scope`: ``/blocks/blocks.3/attn/qkv/Gemm`` -> ``blocks.3``).
    It answers why pruning that cut MACs did not cut latency as much (layout ops that do not shrink,
    blocks whose kernels run at low efficiency).
    The models are run interleaved, like :func:`measure_onnx_latency` (same ``thread_pool`` choice), so
    they see the same load.
    """
    import json
    import tempfile

    if group_by not in ("op_type", "scope"):
        raise RmtdeployError(f"group_by must be 'op_type' or 'scope', got '{group_by}'")
    if thread_pool not in THREAD_POOLS:
        raise RmtdeployError(f"thread_pool must be one of {', '.join(THREAD_POOLS)}, got '{thread_pool}'")
    _check_counts(models, batch, threads, warmup, runs)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-ortprof-") as tmp:
        spec = {
            "paths": {label: str(path) for label, path in models.items()},
            "threads": threads,
            "batch": batch,
            "input_shape": None if input_shape is None else list(input_shape),
            "warmup": warmup,
            "runs": runs,
            "interleave": True,
            "seed": 0,
            "thread_pool": thread_pool,
            "allow_spinning": False,
            "profile_dir": tmp,
        }
        if thread_pool == "shared":
            timed = _in_child_process(_time_onnx_models, spec)
        else:
            timed = _time_onnx_models(spec)
        traces = {label: json.loads(Path(f).read_text("utf-8")) for label, f in timed["traces"].items()}
    return {label: _group_profile(events, group_by, warmup, runs) for label, events in traces.items()}


def onnx_node_scope(node_name: str) -> str:
    """Top-level block a node belongs to, from the exporter's scope path in its name.

    ``/blocks/blocks.1/attn/qkv/MatMul`` -> ``blocks.1``; ``/layer2/layer2.2/conv1/Conv`` -> ``layer2.2``;
    ``/blocks.3/mlp/fc1/MatMul`` -> ``blocks.3``; ``/Add`` -> ``(top)``; a name ORT made up -> ``(unscoped)``.
    Matches :func:`module_scope` for PyTorch module names.
    """
    if not node_name.startswith("/"):
        return "(unscoped)"
    parts = node_name.split("/")[1:-1]  # drop the op's own name
    if not parts:
        return "(top)"
    if len(parts) > 1 and parts[1].startswith(parts[0] + "."):
        return parts[1]  # a container's child: the exporter repeats the full dotted name
    return parts[0]


def module_scope(model, module_name: str) -> str:
    """Top-level block of a PyTorch module name, the same key :func:`onnx_node_scope` gives its nodes."""
    from torch import nn

    parts = module_name.split(".")
    child = getattr(model, parts[0], None)
    if len(parts) > 1 and isinstance(child, (nn.Sequential, nn.ModuleList)):
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _group_profile(events: list[dict], group_by: str, warmup: int, runs: int) -> dict[str, float]:
    per_key: dict[str, list[float]] = {}
    suffix = "_kernel_time"
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(suffix):
            continue
        if group_by == "op_type":
            key = event.get("args", {}).get("op_name", "?")
        else:
            key = onnx_node_scope(name[: -len(suffix)])
        per_key.setdefault(key, []).append(float(event.get("dur", 0.0)))
    # The profiler records every run since the session was created, in order, and each key occurs the
    # same number of times per run: drop the warm-up runs and sum each timed run. Then take the fastest
    # run per key: on a shared machine preemption only ever adds time to a kernel, and a block's share
    # is tiny next to a whole inference, so a median still carries other processes' bursts.
    result: dict[str, float] = {}
    for key, durations in per_key.items():
        per_run = len(durations) // (warmup + runs)
        timed = np.asarray(durations[per_run * warmup : per_run * (warmup + runs)]).reshape(runs, per_run)
        result[key] = float(timed.sum(axis=1).min()) / 1e3
    return dict(sorted(result.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------------------------- internals


def _check_counts(models: Mapping[str, Any], batch: int, threads: int, warmup: int, runs: int) -> None:
    if not models:
        raise RmtdeployError("nothing to benchmark: no models given")
    if batch < 1 or threads < 1 or runs < 1 or warmup < 0:
        raise RmtdeployError(
            f"batch, threads and runs must be >= 1 and warmup >= 0 (got batch={batch}, threads={threads}, "
            f"runs={runs}, warmup={warmup})"
        )


def _is_session(item: Any) -> bool:
    return hasattr(item, "run") and hasattr(item, "get_inputs")


def _in_child_process(fn: Callable[[dict], dict], spec: dict) -> dict:
    """Run ``fn(spec)`` in a fresh Python process: ORT's shared pool is per process and final.

    A plain subprocess (not multiprocessing's spawn, which re-imports the caller's ``__main__`` and with
    it torch) keeps the start-up to about a second. Data goes through JSON files.
    """
    import json
    import subprocess
    import sys
    import tempfile

    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({"function": fn.__name__, "spec": spec}), encoding="utf-8")
        code = (
            "import sys; from rmtdeploy.benchmark import _child_main; _child_main(sys.argv[1], sys.argv[2])"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(spec_path), str(result_path)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if not result_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RmtdeployError(f"benchmark child process failed (exit {proc.returncode}): {tail[0][:300]}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    if "error" in result:
        raise RmtdeployError(result["error"])
    return result["result"]


def _child_main(spec_path: str, result_path: str) -> None:
    """Entry point of :func:`_in_child_process`'s process: run the named function, write JSON back."""
    import json

    request = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    functions = {"_time_onnx_models": _time_onnx_models}
    try:
        out: dict[str, Any] = {"result": functions[request["function"]](request["spec"])}
    except RmtdeployError as exc:
        out = {"error": str(exc)}
    except Exception as exc:  # report anything else as one line too; the parent raises it
        out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    Path(result_path).write_text(json.dumps(out), encoding="utf-8")


def _time_onnx_models(spec: dict, sessions: Mapping[str, Any] | None = None) -> dict:
    """Build CPU sessions for ``spec["paths"]`` (plus ready ``sessions``), warm up and time them.

    Runs in the caller's process or in a spawned child (``thread_pool="shared"``), so it takes and
    returns plain data only.
    """
    import onnxruntime as ort

    if spec["thread_pool"] == "shared":
        _create_shared_pool(spec["threads"])
    built: dict[str, Any] = dict(sessions or {})
    for i, (label, path) in enumerate(spec["paths"].items()):
        prefix = f"{spec['profile_dir']}/p{i}" if spec["profile_dir"] else None
        built[label] = _cpu_session(
            path,
            threads=spec["threads"],
            allow_spinning=spec["allow_spinning"],
            shared_pool=spec["thread_pool"] == "shared",
            profile_prefix=prefix,
        )
    rng = np.random.default_rng(spec["seed"])
    runners: dict[str, Callable[[], object]] = {}
    shapes: dict[str, list[int]] = {}
    for label, sess in built.items():
        meta = sess.get_inputs()[0]
        shapes[label] = _concrete_shape(meta.shape, spec["batch"], spec["input_shape"], label)
        feed = {meta.name: rng.standard_normal(shapes[label], dtype=np.float32)}
        runners[label] = _bind_run(sess, feed)
    samples = _timed_rounds(runners, warmup=spec["warmup"], runs=spec["runs"], interleave=spec["interleave"])
    shared = spec["thread_pool"] == "shared"
    return {
        "samples_ms": {label: values.tolist() for label, values in samples.items()},
        "input_shapes": shapes,
        "providers": {label: list(sess.get_providers()) for label, sess in built.items()},
        # A session on the shared pool reports 0 threads of its own: give the pool's size instead.
        "intra_op_threads": {
            label: spec["threads"] if shared else sess.get_session_options().intra_op_num_threads
            for label, sess in built.items()
        },
        "onnxruntime_version": ort.__version__,
        "traces": {label: sess.end_profiling() for label, sess in built.items()}
        if spec["profile_dir"]
        else {},
    }


def _create_shared_pool(threads: int) -> None:
    """Create ORT's process-wide intra-op pool (only ever called in a fresh child process)."""
    from onnxruntime.capi import _pybind_state as ort_c

    try:
        ort_c.set_global_thread_pool_sizes(threads, 1)
    except Exception as exc:
        raise RmtdeployError(
            f"cannot create ONNX Runtime's shared thread pool ({str(exc).splitlines()[0][:160]}); "
            "use thread_pool='per-session'"
        ) from exc


def _cpu_session(
    path: str | os.PathLike,
    *,
    threads: int,
    allow_spinning: bool,
    shared_pool: bool = False,
    profile_prefix: str | None = None,
):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RmtdeployError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    # One op at a time: inter-op parallelism would use more cores than ``threads`` says.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if shared_pool:
        opts.use_per_session_threads = False
    else:
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


def _concrete_shape(
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


def _bind_run(sess, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    def run() -> object:
        return sess.run(None, feed)

    return run


def _bind_torch_run(module, x) -> Callable[[], object]:
    def run() -> object:
        return module(x)

    return run


def _check_pairs(labels: list[str], pairs: Sequence[tuple[str, str]] | None) -> None:
    for base, cand in pairs or ():
        for label in (base, cand):
            if label not in labels:
                raise RmtdeployError(
                    f"speedup pair names unknown model '{label}'; known: {', '.join(labels)}"
                )


def _measure(
    labels: list[str],
    time_models: Callable[[], dict[str, np.ndarray]],
    *,
    pairs: Sequence[tuple[str, str]] | None,
    interleave: bool,
    conditions: dict[str, Any],
) -> LatencyReport:
    if pairs is None:
        pairs = [(labels[0], other) for other in labels[1:]]
    load_before = _loadavg()
    started = time.time()
    samples = time_models()
    conditions.update(
        started_unix=round(started, 3),
        wall_s=round(time.time() - started, 3),
        loadavg_before=load_before,
        loadavg_after=_loadavg(),
    )
    models = {label: LatencyStats.from_samples(label, samples[label]) for label in labels}
    speedups = [
        SpeedupStats.from_samples(base, cand, samples[base], samples[cand], paired=interleave)
        for base, cand in pairs
    ]
    return LatencyReport(
        models=models,
        speedups=speedups,
        conditions=conditions,
        samples_ms={label: [float(v) for v in samples[label]] for label in labels},
    )


def _timed_rounds(
    runners: dict[str, Callable[[], object]], *, warmup: int, runs: int, interleave: bool
) -> dict[str, np.ndarray]:
    """Per-run latency in ms. Interleaved: round r runs every model once, starting at model r mod n."""
    labels = list(runners)
    for _ in range(warmup):
        for label in labels:
            runners[label]()
    times = {label: np.empty(runs, dtype=np.float64) for label in labels}
    clock = time.perf_counter
    if interleave:
        for r in range(runs):
            # Rotating the start cancels any systematic advantage of going first (warm caches, turbo).
            offset = r % len(labels)
            for label in labels[offset:] + labels[:offset]:
                t0 = clock()
                runners[label]()
                times[label][r] = (clock() - t0) * 1e3
    else:
        for label in labels:
            run = runners[label]
            for r in range(runs):
                t0 = clock()
                run()
                times[label][r] = (clock() - t0) * 1e3
    return times


def _common_conditions(
    *, backend: str, batch: int, threads: int, warmup: int, runs: int, interleave: bool
) -> dict[str, Any]:
    return {
        "backend": backend,
        "device": "cpu",
        "batch": batch,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "interleave": interleave,
        "timer": "time.perf_counter around one inference call, input already in memory",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy_version": np.__version__,
    }


def cpu_model() -> str:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``), else whatever ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _loadavg() -> list[float] | None:
    # Other processes share the cores: the 1/5/15-minute load says how contended a measurement was.
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None
