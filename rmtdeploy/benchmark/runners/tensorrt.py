"""TensorRT: serialized engines (built by :mod:`rmtdeploy.engine`) run on a CUDA GPU.

The engine is deserialized and bound through the Jetson bundle's own on-device helpers
(:mod:`rmtdeploy.bundle.bench_on_device`: libcudart through ctypes, device buffers, one
``execute_async_v3`` + stream synchronise per call), so a GPU machine and a board time the same way.
Device memory is the runner's for the ``with runner:`` block (the timing protocol's): leaving it drops
every bound engine and frees their buffers and the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmtdeploy.benchmark.runners.base import Runner
from rmtdeploy.errors import RmtdeployError


class TensorRTRunner(Runner):
    """Engines (a ``.engine`` path or the serialized bytes) at a fixed batch; random inputs uploaded once
    (values do not change TensorRT's time)."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, *, batch: int = 1, precision: str | None = None):
        from rmtdeploy.bundle import bench_on_device
        from rmtdeploy.engine.versions import installed_tensorrt

        self.version = installed_tensorrt()
        if self.version is None:
            raise RmtdeployError("TensorRT is not installed here (import tensorrt failed): `pip install rmtdeploy[tensorrt]` on a GPU machine")  # fmt: skip
        import tensorrt as trt

        self.trt, self.on_device = trt, bench_on_device
        self.batch, self.precision = batch, precision
        self.bound: list = []
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            self.cuda = bench_on_device.Cuda()
        except bench_on_device.DeviceBenchError as exc:
            raise RmtdeployError(f"cannot time TensorRT engines here: {exc}") from None

    def bind(self, label: str, model: Any) -> Callable[[], object]:
        if not isinstance(model, (bytes, bytearray)) and not Path(model).is_file():
            raise RmtdeployError(f"TensorRT engine not found: {model}")
        try:
            call = self.on_device.load_engine(self.trt, self.runtime, self.cuda, model, self.batch)
        except self.on_device.DeviceBenchError as exc:
            raise RmtdeployError(f"cannot run the engine of '{label}': {exc}") from None
        call.label = label
        self.bound.append(call)
        failure = self.on_device.DeviceBenchError

        def run() -> None:
            try:
                call()
            except failure as exc:  # a failed execute: one line, and the sample is never recorded
                raise RmtdeployError(str(exc)) from None

        return run

    def __enter__(self) -> TensorRTRunner:
        if self.cuda.stream is None:  # a second block after one that freed everything
            self.cuda = self.on_device.Cuda(self.cuda.lib)
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Drop the engines, then free every device buffer and the stream (``cudaFree``,
        ``cudaStreamDestroy``)."""
        for call in self.bound:
            call.close()
        self.bound = []
        try:
            self.cuda.close()
        except self.on_device.DeviceBenchError as exc:
            if exc_info[0] is None:  # do not hide the error that ended the block
                raise RmtdeployError(f"after timing the engines: {exc}") from None

    def conditions(self) -> dict[str, Any]:
        return {"tensorrt_version": self.version, "gpu": _gpu_name(), "precision": self.precision,
                "timer": "time.perf_counter around execute_async_v3 + cudaStreamSynchronize"}  # fmt: skip


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None
