"""A stand-in for the parts of TensorRT's Python API (and of libcudart) that rmtdeploy's runtime code uses.

It must return what the real API returns, not what the code hopes for: ``set_input_shape``,
``set_tensor_address`` and ``execute_async_v3`` return ``bool`` (a refused call returns False and
changes nothing: an input shape left unset reads -1), ``get_tensor_dtype`` a ``DataType`` member,
``get_tensor_profile_shape`` the ``[min, opt, max]`` shapes. Every class bears the name of the real
class it stands for; ``tests/test_tensorrt_api.py`` checks each public name and return annotation against
the bindings of TensorRT 10.3 and 11.4 (``tests/tensorrt_api/tensorrt-*.txt``). Bookkeeping that tests
read lives in names starting with ``_``.
"""

from __future__ import annotations

import ctypes
import enum
import math


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9

    @property
    def itemsize(self) -> float:
        return {"FLOAT": 4, "HALF": 2, "INT8": 1, "INT32": 4, "BOOL": 1, "UINT8": 1, "FP8": 1, "BF16": 2,
                "INT64": 8, "INT4": 0.5}[self.name]  # fmt: skip


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ICudaEngine:
    """An engine with one input (``input``, shape ``input_shape``, -1 = dynamic) and one output
    ``logits`` of ``classes``; a dynamic batch has the optimisation profile ``profile`` (min, opt, max)."""

    def __init__(self, input_shape=(-1, 3, 32, 32), classes=10, profile=((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32)),
                 dtype=DataType.FLOAT):  # fmt: skip
        self._io = {
            "input": (tuple(input_shape), TensorIOMode.INPUT),
            "logits": ((input_shape[0], classes), TensorIOMode.OUTPUT),
        }
        self._profile = profile if input_shape[0] < 0 else None
        self._dtype, self._classes, self._contexts = dtype, classes, []
        self._work = None  # what an execution computes, where a test gives one (the graph on ONNX Runtime)

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index) -> str:
        return list(self._io)[index]

    def get_tensor_mode(self, name) -> TensorIOMode:
        return self._io[name][1] if name in self._io else TensorIOMode.NONE

    def get_tensor_shape(self, name) -> tuple:
        return self._io[name][0]

    def get_tensor_dtype(self, name) -> DataType:
        return self._dtype

    def get_tensor_profile_shape(self, name, profile_index) -> list:
        if self._profile is None or self._io[name][1] != TensorIOMode.INPUT:
            raise RuntimeError("no optimization profile for this tensor")  # the real call fails too
        return [tuple(s) for s in self._profile]

    def create_execution_context(self) -> IExecutionContext:
        context = IExecutionContext(self)
        self._contexts.append(context)
        return context


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self._engine, self._shapes, self._addresses, self._runs = engine, {}, {}, []
        self._fail_execute = False

    def set_input_shape(self, name, shape) -> bool:
        declared = self._engine.get_tensor_shape(name)
        shape = tuple(shape)
        if len(shape) != len(declared) or any(
            d >= 0 and d != s for d, s in zip(declared, shape, strict=True)
        ):
            return False
        profile = self._engine._profile
        if profile is not None and not all(
            lo <= s <= hi for lo, s, hi in zip(profile[0], shape, profile[2], strict=True)
        ):
            return False  # like TensorRT: refused, and the shape stays unset (-1)
        self._shapes[name] = shape
        self._shapes["logits"] = (shape[0], self._engine._classes)
        return True

    def get_tensor_shape(self, name) -> tuple:
        return self._shapes.get(name, self._engine.get_tensor_shape(name))

    def set_tensor_address(self, name, memory) -> bool:
        if name not in self._engine._io or not memory:
            return False
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        if self._fail_execute or set(self._addresses) != set(self._engine._io):
            return False
        if self._engine._work is not None:
            self._engine._work()
        self._runs.append(stream_handle)
        return True


class Runtime:
    def __init__(self, engines=None):
        self._engines = engines or {b"ok": ICudaEngine()}
        self.DLA_core = -1  # TensorRT's default: no DLA core
        self._dla_cores_seen = []

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine:
        self._dla_cores_seen.append(self.DLA_core)
        return self._engines.get(bytes(serialized_engine))


class Logger:
    WARNING = "WARNING"  # a Severity member in TensorRT; only passed through

    def __init__(self, min_severity=WARNING):
        self.min_severity = min_severity


class ITimingCache:
    def __init__(self, data: bytes):
        self._data = data

    def serialize(self) -> bytes:
        return self._data or b"fresh cache"


class IBuilderConfig:
    """Timing caches: a cache made elsewhere is refused by ``set_timing_cache`` (False), a damaged one
    fails to deserialize, as the real ones do."""

    def __init__(self, this_gpu: bytes = b"gpu-A"):
        self._gpu, self._cache = this_gpu, None

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        if data and not data.startswith(b"gpu-"):
            raise RuntimeError("invalid timing cache")
        return ITimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        if cache._data and not cache._data.startswith(self._gpu) and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self._cache


class Module:
    """``import tensorrt as trt`` for the code under test: the classes above plus the module functions."""

    DataType, TensorIOMode, Runtime, ICudaEngine, IExecutionContext, Logger = (
        DataType, TensorIOMode, Runtime, ICudaEngine, IExecutionContext, Logger)  # fmt: skip
    __version__ = "10.3.0"

    @staticmethod
    def volume(iterable) -> int:
        return math.prod(iterable)


MODULE_NAMES = (
    "DataType",
    "TensorIOMode",
    "Runtime",
    "ICudaEngine",
    "IExecutionContext",
    "__version__",
    "volume",
)


class Cudart:
    """libcudart's few calls through ctypes, as the real library takes them (byref pointers, c_size_t):
    tracks live allocations and streams, so a test sees every one freed."""

    def __init__(self):
        self._next, self._live, self._streams, self._copies = 0x1000, {}, set(), []

    def cudaStreamCreate(self, stream_ref) -> int:
        stream_ref._obj.value = 0xBEEF + len(self._streams)
        self._streams.add(stream_ref._obj.value)
        return 0

    def cudaStreamDestroy(self, stream) -> int:
        value = stream.value if isinstance(stream, ctypes.c_void_p) else stream
        if value not in self._streams:
            return 400  # cudaErrorInvalidResourceHandle
        self._streams.discard(value)
        return 0

    def cudaMalloc(self, pointer_ref, size) -> int:
        if size.value <= 0 or size.value > 1 << 40:
            return 2  # cudaErrorMemoryAllocation, what a wrapped negative size gives
        self._next += 0x1000
        pointer_ref._obj.value = self._next
        self._live[self._next] = size.value
        return 0

    def cudaFree(self, pointer) -> int:
        return 0 if self._live.pop(pointer.value, None) is not None else 1

    def cudaMemcpy(self, destination, source, count, kind) -> int:
        self._copies.append((destination.value, count.value))
        return 0

    def cudaStreamSynchronize(self, stream) -> int:
        return 0
