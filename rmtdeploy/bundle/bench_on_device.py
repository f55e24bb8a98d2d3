#!/usr/bin/env python3
"""On-device benchmark of an rmtdeploy Jetson bundle: Python + TensorRT only (CUDA through ctypes).

Times the engines ``build_engine.sh`` built (dense, pruned, INT8 when present, a sweep's candidates
``keep-<ratio>``: the list is in ``bundle.json``) interleaved, round by round, so their ratios hold while
the board's clocks move: warm-up, then ``--runs`` rounds, each engine once per round in rotating order,
one ``execute_async_v3`` + stream synchronise per sample. Records the
board, JetPack, TensorRT, the nvpmodel mode and whether jetson_clocks pinned the clocks, and writes
``bench.json`` in rmtdeploy's benchmark format: ``rmtdeploy bench --import bench.json --out DIR`` on
any machine renders it into the same tables as the local runs.

With ``--latency-table`` (a bundle made with ``rmtdeploy bundle --latency-table``) it then times the
table's engines (``latency_table/``, listed with their groups in ``latency_table/plan.json``) group by
group: each group alone, loaded, interleaved as above and freed before the next (an 8 GB board never holds
more than one group), and adds every sample to ``bench.json``; ``rmtdeploy bench --import`` turns them
into ``latency_table.json`` for ``rmtdeploy prune --latency-table``.

    sudo nvpmodel -m 0 && sudo jetson_clocks      # optional, recorded either way
    bash build_engine.sh && python3 bench_on_device.py --runs 200 [--latency-table]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Bundles that list no engines in bundle.json (rmtdeploy before sweeps) hold these.
ENGINES = (("dense", "dense.engine"), ("pruned", "model.engine"), ("pruned-int8", "model.int8.engine"))
HERE = Path(__file__).resolve().parent
# A latency table's graphs, engines and plan.json (rmtdeploy bundle --latency-table).
TABLE_DIR = "latency_table"
MEMCPY_HOST_TO_DEVICE = 1
# libcudart's sonames, newest first: CUDA 13 (JetPack 7, the plain `tensorrt` wheel), 12 (JetPack 6), the
# unversioned developer link, CUDA 11 (JetPack 5, for a clear TensorRT version error later rather than none).
CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so", "libcudart.so.11.0")
# Where JetPack and CUDA installs keep it, when the loader's path does not say.
CUDART_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib", "/usr/lib/aarch64-linux-gnu",
               "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu")  # fmt: skip
# The CUDA runtime wheels (nvidia-cuda-runtime: CUDA 13 under nvidia/cu13, CUDA 12 under nvidia/cuda_runtime).
CUDART_WHEEL_DIRS = ("nvidia/cu13/lib", "nvidia/cuda_runtime/lib")


# The cudaError_t codes a user can act on (CUDA runtime API, driver_types.h).
CUDA_ERRORS = {2: "out of device memory", 35: "no NVIDIA driver, or one older than this CUDA runtime",
               100: "no CUDA-capable device"}  # fmt: skip


class DeviceBenchError(RuntimeError):
    """A reason this machine cannot time the engines (one line; ``main`` exits with it)."""


def loaded_cudart() -> list[str]:
    """libcudart files this process has already mapped (torch loads one): the same one is used."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    found = [line.split()[-1] for line in maps if "/libcudart.so" in line]
    return list(dict.fromkeys(found))


def cudart_candidates(environ=None, paths=None, loaded=None) -> list[str]:
    """What :func:`find_cudart` tries, in order: a libcudart this process already loaded, the sonames on
    the loader's own path, then ``$CUDA_HOME``/``$CUDA_PATH``, the JetPack and CUDA folders, and the CUDA
    runtime wheels beside the Python packages."""
    environ = os.environ if environ is None else environ
    paths = sys.path if paths is None else paths
    loaded = loaded_cudart() if loaded is None else loaded
    folders = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            folders += [os.path.join(environ[var], "lib64"), os.path.join(environ[var], "lib")]
    folders += list(CUDART_DIRS)
    folders += [os.path.join(p, sub) for p in paths if p for sub in CUDART_WHEEL_DIRS]
    unique = list(dict.fromkeys(folders))
    return [*loaded, *CUDART_NAMES] + [os.path.join(f, n) for f in unique for n in CUDART_NAMES]


def find_cudart(loader=ctypes.CDLL, environ=None, paths=None, loaded=None):
    """libcudart through ctypes, or one line saying what was tried."""
    candidates = cudart_candidates(environ, paths, loaded)
    for candidate in candidates:
        if os.sep in candidate and not os.path.exists(candidate):
            continue
        try:
            return loader(candidate)
        except OSError:
            continue
    folders = sorted({os.path.dirname(c) for c in candidates if os.sep in c})
    raise DeviceBenchError(
        f"libcudart not found (is this a Jetson with JetPack, or a CUDA machine?): tried {', '.join(CUDART_NAMES)} "
        f"on the loader's path and in {', '.join(folders)}; set CUDA_HOME to the CUDA install"
    )


class Cuda:
    """The few CUDA runtime calls a timing loop needs, from libcudart through ctypes (no pycuda).

    A context manager: leaving it frees every buffer it allocated (``cudaFree``) and destroys its stream
    (``cudaStreamDestroy``), so an 8 GB board that shares memory with the CPU gets it back at once, not
    when the process ends. ``rmtdeploy bench --backend tensorrt`` runs engines through this class too (one
    mechanism on the board and on a GPU machine).
    """

    def __init__(self, lib=None):
        self.lib = lib if lib is not None else find_cudart()
        self.buffers: list[int] = []
        self.stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    def __enter__(self) -> Cuda:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def check(self, code: int, what: str) -> None:
        if code != 0:
            why = CUDA_ERRORS.get(code)
            raise DeviceBenchError(f"{what} failed with CUDA error {code}" + (f" ({why})" if why else ""))

    def malloc(self, size: int) -> int:
        if size <= 0:
            raise DeviceBenchError(f"cannot allocate {size} bytes of device memory")
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(size)), "cudaMalloc")
        self.buffers.append(pointer.value)
        return pointer.value

    def free(self, address: int) -> None:
        if address in self.buffers:
            self.buffers.remove(address)
            self.check(self.lib.cudaFree(ctypes.c_void_p(address)), "cudaFree")

    def upload(self, device: int, data: bytes) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(device), data, ctypes.c_size_t(len(data)),
                                       MEMCPY_HOST_TO_DEVICE), "cudaMemcpy")  # fmt: skip

    def synchronize(self) -> None:
        self.check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Free every buffer, then destroy the stream; safe to call twice."""
        errors = [self.lib.cudaFree(ctypes.c_void_p(address)) for address in self.buffers]
        self.buffers = []
        if self.stream is not None:
            errors.append(self.lib.cudaStreamDestroy(self.stream))
            self.stream = None
        failed = [code for code in errors if code != 0]
        if failed:
            raise DeviceBenchError(f"freeing device memory failed with CUDA error {failed[0]}")


class BoundEngine:
    """One engine bound to device buffers: calling it runs one inference (``execute_async_v3`` + stream
    synchronise); a failed execute raises, so it is never timed. ``close`` frees its buffers."""

    def __init__(self, label: str, cuda: Cuda, engine, context, buffers: list[int]):
        self.label, self.cuda, self.engine, self.context, self.buffers = label, cuda, engine, context, buffers

    def __call__(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream.value):
            raise DeviceBenchError(
                f"TensorRT could not run {self.label} (execute_async_v3 failed): see its log above"
            )
        self.cuda.synchronize()

    def close(self) -> None:
        self.context = self.engine = None  # TensorRT's own memory goes with them
        for address in self.buffers:
            self.cuda.free(address)
        self.buffers = []


def load_engine(trt, runtime, cuda: Cuda, engine_file, batch: int = 1) -> BoundEngine:
    """A deserialised engine (a path, or the serialized bytes) with every I/O tensor bound to device
    memory at ``batch`` (a dynamic batch dimension takes it; a static one must equal it). Each TensorRT
    call that can fail is checked and named; on failure the buffers allocated so far are freed."""
    data = engine_file if isinstance(engine_file, (bytes, bytearray)) else Path(engine_file).read_bytes()
    label = "the engine" if data is engine_file else str(engine_file)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise DeviceBenchError(f"TensorRT cannot load {label}")
    context = engine.create_execution_context()
    if context is None:
        raise DeviceBenchError(
            f"TensorRT cannot create an execution context for {label} (out of device memory?)"
        )
    bound = BoundEngine(label, cuda, engine, context, [])
    try:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:  # input shapes first: the outputs' shapes follow from them
            shape = bound_shape(engine.get_tensor_shape(name), batch, name)
            if not context.set_input_shape(name, shape):
                raise DeviceBenchError(profile_problem(engine, name, shape, label))
        for name in names:
            shape = list(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise DeviceBenchError(
                    f"tensor '{name}' of {label} has no shape after binding the inputs: {shape}"
                )
            size = math.ceil(trt.volume(shape) * engine.get_tensor_dtype(name).itemsize)
            address = cuda.malloc(size)
            bound.buffers.append(address)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                cuda.upload(address, os.urandom(size))  # the values do not change the time
            if not context.set_tensor_address(name, address):
                raise DeviceBenchError(f"TensorRT refused the device buffer of tensor '{name}' of {label}")
    except BaseException:
        bound.close()
        raise
    return bound


def profile_problem(engine, name: str, shape: list[int], label: str) -> str:
    """Why ``set_input_shape(name, shape)`` failed, from the engine's first optimisation profile."""
    try:
        low, _, high = (list(dims) for dims in engine.get_tensor_profile_shape(name, 0))
    except Exception:  # noqa: BLE001 (no profile: a static engine)
        low = high = None
    if low and high and not low[0] <= shape[0] <= high[0]:
        return f"batch {shape[0]} is outside the profile of {label}: {low[0]}–{high[0]} (input '{name}')"
    return f"TensorRT refused input shape {shape} for '{name}' of {label} (profile {low}–{high})"


def bound_shape(shape, batch: int, name: str = "input") -> list[int]:
    """An engine tensor's shape with its dynamic dimensions fixed: the batch for the first, else 1. A
    static batch dimension must be ``batch`` (else the time would be another batch's)."""
    shape = list(shape)
    if shape and shape[0] >= 0 and shape[0] != batch:
        raise DeviceBenchError(
            f"the engine takes batch {shape[0]} only (static '{name}'); asked for batch {batch}"
        )
    return [(batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(shape)]


def interleaved(calls: dict, warmup: int, runs: int) -> dict[str, list[float]]:
    labels = list(calls)
    for _ in range(warmup):
        for label in labels:
            calls[label]()
    samples = {label: [] for label in labels}
    for r in range(runs):
        offset = r % len(labels)
        for label in labels[offset:] + labels[:offset]:
            started = time.perf_counter()
            calls[label]()
            samples[label].append((time.perf_counter() - started) * 1e3)
    return samples


def table_engine(graph: str) -> str:
    """The engine ``build_engine.sh`` writes for a latency-table graph (``unit3-64.onnx`` -> ``unit3-64.engine``)."""
    return (graph[: -len(".onnx")] if graph.endswith(".onnx") else graph) + ".engine"


def table_engines(folder: Path) -> tuple[dict, dict]:
    """The latency table's plan (``folder/plan.json``) and its engine per label, every one built; each group
    holds its reference (the graph the others are timed against) among its labels."""
    plan = json.loads((folder / "plan.json").read_text())
    for i, group in enumerate(plan["groups"]):
        if group.get("reference") not in group["labels"]:
            raise DeviceBenchError(
                f"group {i + 1} of the latency table's plan has no reference graph among its labels: "
                "make the bundle again with rmtdeploy bundle --latency-table"
            )
    engines = {label: folder / table_engine(graph) for label, graph in plan["graphs"].items()}
    missing = [path.name for path in engines.values() if not path.is_file()]
    if missing:
        raise DeviceBenchError(
            f"{len(missing)} of the latency table's {len(engines)} engines are not built (first: {missing[0]}): "
            "bash build_engine.sh --latency-table builds them, skipping those already built"
        )
    return plan, engines


def time_latency_table(trt, runtime, cuda: Cuda, plan: dict, engines: dict, warmup: int, runs: int,
                       say=print) -> dict:  # fmt: skip
    """Every group of the latency table's ``plan`` timed on its own: its ``engines`` loaded (batch 1),
    interleaved with a rotating start after ``warmup`` rounds, then freed before the next group loads (one
    group in memory at a time). Returns the plan and each group's samples; rmtdeploy computes the
    statistics from them (``rmtdeploy bench --import``)."""
    groups = []
    for i, group in enumerate(plan["groups"]):
        labels = list(group["labels"])
        say(f"latency table: group {i + 1}/{len(plan['groups'])}, {len(labels)} engines")
        calls = {}
        try:
            for label in labels:
                calls[label] = load_engine(trt, runtime, cuda, engines[label], 1)
            samples = interleaved(calls, warmup, runs)
        finally:
            for call in calls.values():
                call.close()
        groups.append({"labels": labels, "reference": group["reference"], "samples_ms": samples})
    return {"plan": plan, "warmup": warmup, "runs": runs, "groups": groups}


def board_facts(trt_version: str) -> dict:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip("\x00\n ") or None
        except OSError:
            return None

    def run(*cmd: str) -> str | None:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    clocks = run("jetson_clocks", "--show")
    return {
        "board": read("/proc/device-tree/model"),
        "l4t_release": read("/etc/nv_tegra_release"),
        "jetpack": run("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"),
        "nvpmodel": run("nvpmodel", "-q"),
        "jetson_clocks": clocks if clocks else "unknown (jetson_clocks --show needs sudo)",
        "gpu_max_freq": read("/sys/devices/gpu.0/devfreq/17000000.ga10b/max_freq")
        or read("/sys/devices/17000000.gpu/devfreq/17000000.gpu/max_freq"),
        "tensorrt_version": trt_version,
        "python": platform.python_version(),
    }


def results(samples: dict, bundle: dict, warmup: int, runs: int, facts: dict) -> dict:
    """``bench.json`` in rmtdeploy's benchmark format (``rmtdeploy bench --import`` reads it)."""
    return {
        "format": "rmtdeploy-bench",
        "version": 1,
        "models": {label: bundle["models"].get(label, {}) for label in samples},
        "conditions": {
            "backend": "tensorrt", "device": "cuda", "batch": bundle["batch"], "threads": None,
            "warmup": warmup, "runs": runs, "interleave": True,
            "timer": "time.perf_counter around execute_async_v3 + cudaStreamSynchronize",
            "target": bundle["target"], **facts,
        },
        "samples_ms": samples,
    }  # fmt: skip


def latency_table_request(folder: Path, asked: bool):
    """``(plan, engines)`` of the bundle's latency table when asked for (checked before any timing), else None."""
    if not (folder / "plan.json").is_file():
        if asked:
            raise SystemExit(f"bench_on_device: this bundle has no latency table ({TABLE_DIR}/plan.json): make "
                             "it with rmtdeploy bundle --latency-table")  # fmt: skip
        return None
    if not asked:
        print(
            "bench_on_device: this bundle has a latency table: add --latency-table to time it",
            file=sys.stderr,
        )
        return None
    try:
        return table_engines(folder)
    except DeviceBenchError as exc:
        raise SystemExit(f"bench_on_device: {exc}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "bench.json"))
    parser.add_argument("--latency-table", action="store_true",
                        help=f"then time the latency table's engines ({TABLE_DIR}/), group by group")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        import tensorrt as trt
    except ImportError:
        raise SystemExit(
            "bench_on_device: TensorRT's Python package is missing (it ships with JetPack)"
        ) from None
    bundle = json.loads((HERE / "bundle.json").read_text())
    listed = bundle.get("engines") or ENGINES
    present = [(label, HERE / file) for label, file in listed if (HERE / file).is_file()]
    if len(present) < 2 or present[0][0] != "dense":
        raise SystemExit("bench_on_device: build the engines first (bash build_engine.sh)")
    if bundle.get("engines") and len(present) < len(listed):
        missing = ", ".join(file for _, file in listed if not (HERE / file).is_file())
        print(f"bench_on_device: not built, so not timed: {missing}", file=sys.stderr)
    table = latency_table_request(HERE / TABLE_DIR, args.latency_table)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        runtime = trt.Runtime(logger)
        if bundle.get("dla"):
            runtime.DLA_core = int(bundle.get("dla_core", 0))  # as trtexec --useDLACore does
        with Cuda() as cuda:
            calls = {label: load_engine(trt, runtime, cuda, path, bundle["batch"]) for label, path in present}
            samples = interleaved(calls, args.warmup, args.runs)
            for call in calls.values():
                call.close()
            if table is not None:
                timed = time_latency_table(trt, runtime, cuda, *table, args.warmup, args.runs)
    except DeviceBenchError as exc:
        raise SystemExit(f"bench_on_device: {exc}") from None
    result = results(samples, bundle, args.warmup, args.runs, board_facts(trt.__version__))
    if table is not None:
        result["latency_table"] = {"precision": (bundle.get("latency_table") or {}).get("precision"), **timed}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for label, values in samples.items():
        print(f"{label:12s} median {sorted(values)[len(values) // 2]:.3f} ms")
    print(f"wrote {args.out}; on your machine: rmtdeploy bench --import {Path(args.out).name} --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
