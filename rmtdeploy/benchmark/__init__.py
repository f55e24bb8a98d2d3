"""Benchmark stage: latency of exported (ONNX Runtime) or in-memory (PyTorch) models.

Latency on a shared machine swings widely within minutes, so a single model's mean says little. The
protocol (:mod:`~rmtdeploy.benchmark.protocol`) makes the numbers usable:

* **Interleaving.** Every round runs each model once, back to back, rotating which model goes first;
  slow phases of the machine then hit all models of a round alike.
* **Per-round ratios.** A speedup is the median over rounds of ``time(baseline) / time(candidate)``
  within the same round, not the ratio of two medians taken at different moments.
* **One shared ONNX Runtime thread pool** (``thread_pool="shared"``, the default). Sessions that each
  own spinning worker threads steal each other's cores when interleaved, and turning spinning off makes
  every op pay a thread wake-up, which small (pruned) graphs feel most; a process-wide pool with ORT's
  default spinning times each model as it runs alone when deployed. ORT sizes that pool once per
  process, so it lives in a short-lived child process (:mod:`~rmtdeploy.benchmark.isolation`).

docs/benchmarks.md gives the protocol in full, with the measurements behind these choices. Every
report carries the conditions it was measured under (backend, providers, batch, threads, runs,
library versions, CPU model, load average: :mod:`~rmtdeploy.machine`) so no number
travels without saying how it was obtained.

Modules: ``stats`` (what a measurement returns), ``conditions`` (the machine), ``protocol`` (timing,
the same for every backend), ``runners`` (one per backend: how to run one inference), ``isolation``
(the child process), ``latency`` (the entry points), ``profile`` (where the time goes). Importing this
package imports neither torch nor onnxruntime; the runners do when they run.
"""

from rmtdeploy.benchmark.latency import measure_onnx_latency, measure_tensorrt_latency, measure_torch_latency
from rmtdeploy.benchmark.profile import onnx_node_scope, profile_onnx_ops
from rmtdeploy.benchmark.runners import (
    DEFAULT_INPUT_SHAPE,
    THREAD_POOLS,
    OrtCpuRunner,
    Runner,
    TorchRunner,
    cpu_session,
)
from rmtdeploy.benchmark.stats import LatencyReport, LatencyStats, SpeedupStats
from rmtdeploy.machine import (
    cpu_flags,
    cpu_model,
    library_versions,
    loadavg,
    machine_conditions,
    read_cpuinfo,
)
from rmtdeploy.macs import module_scope

__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "THREAD_POOLS",
    "LatencyReport",
    "LatencyStats",
    "OrtCpuRunner",
    "Runner",
    "SpeedupStats",
    "TorchRunner",
    "cpu_flags",
    "cpu_model",
    "cpu_session",
    "library_versions",
    "loadavg",
    "machine_conditions",
    "measure_onnx_latency",
    "measure_tensorrt_latency",
    "measure_torch_latency",
    "module_scope",
    "onnx_node_scope",
    "profile_onnx_ops",
    "read_cpuinfo",
]
