"""Backend runners: one :class:`Runner` per backend and device, one file each.

Today: :class:`OrtCpuRunner` (ONNX Runtime, CPU provider), :class:`TorchRunner` (PyTorch eager
or ``torch.compile``, CPU or CUDA, CUDA graphs through ``compile_mode="reduce-overhead"`` or
``cuda_graph``) and :class:`TensorRTRunner` (serialized engines on a CUDA GPU, bound by the Jetson
bundle's own on-device code). A new backend is one new file here with a ``Runner`` subclass, plus a
``measure_*_latency`` entry point in :mod:`rmtdeploy.benchmark.latency` that builds it and hands it to
:func:`rmtdeploy.benchmark.protocol.run_rounds`; the protocol, the statistics and the report do not
change.

Runners import their backend library only when used, so that ``import rmtdeploy.benchmark`` stays
cheap and a backend that is not installed only fails when asked for.
"""

from rmtdeploy.benchmark.runners.base import DEFAULT_INPUT_SHAPE, Runner
from rmtdeploy.benchmark.runners.onnxruntime_cpu import THREAD_POOLS, OrtCpuRunner, cpu_session
from rmtdeploy.benchmark.runners.pytorch import TorchRunner
from rmtdeploy.benchmark.runners.tensorrt import TensorRTRunner

__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "THREAD_POOLS",
    "OrtCpuRunner",
    "Runner",
    "TensorRTRunner",
    "TorchRunner",
    "cpu_session",
]
