#!/usr/bin/env python3
"""On-device benchmark of an rmtdeploy Jetson bundle: Python + TensorRT only (CUDA through ctypes).

Times the engines ``build_engine.sh`` built (dense, pruned, INT8 when present) interleaved, round by
round, so their ratio holds while the board's clocks move: warm-up, then ``--runs`` rounds, each engine
once per round in rotating order, one ``execute_async_v3`` + stream synchronise per sample. Records the
board, JetPack, TensorRT, the nvpmodel mode and whether jetson_clocks pinned the clocks, and writes
``bench.json`` in rmtdeploy's benchmark format: ``rmtdeploy bench --import bench.json --out DIR`` on
any machine renders it into the same tables as the local runs.

    sudo nvpmodel -m 0 && sudo jetson_clocks      # optional, recorded either way
    bash build_engine.sh && python3 bench_on_device.py --runs 200
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ENGINES = (("dense", "dense.engine"), ("pruned", "model.engine"), ("pruned-int8", "model.int8.engine"))
HERE = Path(__file__).resolve().parent
MEMCPY_HOST_TO_DEVICE = 1


class DeviceBenchError(RuntimeError):
    """A reason this machine cannot time the engines (one line; ``main`` exits with it)."""


class Cuda:
    """The few CUDA runtime calls a timing loop needs, from libcudart through ctypes (no pycuda).

    ``rmtdeploy bench --backend tensorrt`` runs engines through this class too (one mechanism on the
    board and on a GPU machine); where torch already loaded libcudart, the same library is found.
    """

    def __init__(self):
        for name in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0"):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise DeviceBenchError("libcudart not found (is this a Jetson with JetPack, or a CUDA machine?)")
        self.stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    def check(self, code: int, what: str) -> None:
        if code != 0:
            raise DeviceBenchError(f"{what} failed with CUDA error {code}")

    def malloc(self, size: int) -> int:
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(size)), "cudaMalloc")
        return pointer.value

    def upload(self, device: int, data: bytes) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(device), data, ctypes.c_size_t(len(data)),
                                       MEMCPY_HOST_TO_DEVICE), "cudaMemcpy")  # fmt: skip

    def synchronize(self) -> None:
        self.check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


def load_engine(trt, runtime, cuda: Cuda, engine_file, batch: int = 1):
    """A deserialised engine (a path, or the serialized bytes) with every I/O tensor bound to device
    memory at ``batch`` (a dynamic batch dimension takes it; a static one stays); returns one inference
    call."""
    data = engine_file if isinstance(engine_file, (bytes, bytearray)) else Path(engine_file).read_bytes()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise DeviceBenchError(f"TensorRT cannot load {'the engine' if data is engine_file else engine_file}")
    context = engine.create_execution_context()
    inputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in inputs if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    for name in inputs:  # input shapes first: the outputs' shapes follow from them
        context.set_input_shape(name, bound_shape(engine.get_tensor_shape(name), batch))
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        shape = context.get_tensor_shape(name)
        size = trt.volume(shape) * trt.nptype(engine.get_tensor_dtype(name))(0).itemsize
        address = cuda.malloc(size)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            cuda.upload(address, os.urandom(size))  # the values do not change the time
        context.set_tensor_address(name, address)

    def call():
        context.execute_async_v3(cuda.stream.value)
        cuda.synchronize()

    return call


def bound_shape(shape, batch: int) -> list[int]:
    """An engine tensor's shape with its dynamic dimensions fixed: the batch for the first, else 1."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "bench.json"))
    args = parser.parse_args(argv)
    try:
        import tensorrt as trt
    except ImportError:
        raise SystemExit(
            "bench_on_device: TensorRT's Python package is missing (it ships with JetPack)"
        ) from None
    present = [(label, HERE / file) for label, file in ENGINES if (HERE / file).is_file()]
    if len(present) < 2:
        raise SystemExit("bench_on_device: build the engines first (bash build_engine.sh)")
    bundle = json.loads((HERE / "bundle.json").read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        runtime, cuda = trt.Runtime(logger), Cuda()
        calls = {label: load_engine(trt, runtime, cuda, path, bundle["batch"]) for label, path in present}
        samples = interleaved(calls, args.warmup, args.runs)
    except DeviceBenchError as exc:
        raise SystemExit(f"bench_on_device: {exc}") from None
    result = results(samples, bundle, args.warmup, args.runs, board_facts(trt.__version__))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for label, values in samples.items():
        print(f"{label:12s} median {sorted(values)[len(values) // 2]:.3f} ms")
    print(f"wrote {args.out}; on your machine: rmtdeploy bench --import {Path(args.out).name} --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
