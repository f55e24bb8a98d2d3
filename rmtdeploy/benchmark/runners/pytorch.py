"""PyTorch: in-memory modules in eval mode under ``inference_mode``, eager or ``torch.compile``d, on the
CPU or a CUDA GPU (optionally in fp16)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from rmtdeploy.benchmark.runners.base import DEFAULT_INPUT_SHAPE, Runner
from rmtdeploy.errors import RmtdeployError

PRECISIONS = ("fp32", "fp16")


class TorchRunner(Runner):
    """``nn.Module`` objects called on one fixed random batch.

    ``compile_mode`` (``"default"``, ``"reduce-overhead"``: CUDA graphs on a GPU, ``"max-autotune"``)
    compiles each module with ``torch.compile`` and runs it once in :meth:`bind`, so that compilation
    is never timed. On CUDA every call synchronises, so the timer sees the finished inference; fp16 is
    CUDA only. ``torch.set_num_threads`` is process-wide and ``eval()`` / ``.to()`` change the caller's
    modules, so threads, modes and devices are restored when the ``with`` block ends.
    """

    def __init__(
        self,
        *,
        threads: int,
        batch: int = 1,
        input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
        seed: int = 0,
        device: str = "cpu",
        compile_mode: str | None = None,
        precision: str = "fp32",
        cuda_graph: bool = False,
    ):
        import torch

        if precision not in PRECISIONS:
            raise RmtdeployError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if precision == "fp16" and device != "cuda":
            raise RmtdeployError(
                "fp16 PyTorch timing needs --device cuda (CPU fp16 kernels are not what ships)"
            )
        if device == "cuda" and not torch.cuda.is_available():
            raise RmtdeployError("--device cuda asked for, but torch sees no CUDA GPU here")
        if cuda_graph and (device != "cuda" or compile_mode):
            raise RmtdeployError("cuda_graph replays eager CUDA kernels: device cuda, no compile_mode")
        self.cuda_graph = cuda_graph
        self.backend = "torch-compile" if compile_mode else "torch-cuda-graph" if cuda_graph else "torch"
        self.device = device
        self.threads, self.compile_mode, self.precision = threads, compile_mode, precision
        self.batch = batch
        self.input = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
        self.modules: dict[str, Any] = {}
        self._stack = ExitStack()

    def __enter__(self) -> TorchRunner:
        import torch

        self._stack.callback(torch.set_num_threads, torch.get_num_threads())
        self._stack.callback(self._restore_modules)
        torch.set_num_threads(self.threads)
        self._stack.enter_context(torch.inference_mode())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def bind(self, label: str, model: Any) -> Callable[[], object]:
        import torch

        first = next(model.parameters(), None)
        self.modules[label] = (model, model.training, None if first is None else (first.device, first.dtype))
        model.eval()
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        model.to(device=self.device, dtype=dtype)
        x = self.input.to(device=self.device, dtype=dtype)
        fn = torch.compile(model, mode=self.compile_mode) if self.compile_mode else model
        if self.cuda_graph:
            fn = _graph_replay(model, x)
            x = None
        if self.device == "cuda":

            def call():
                out = fn(x)
                torch.cuda.synchronize()
                return out
        else:

            def call():
                return fn(x)

        try:
            call()  # compile (or load kernels) here, not in the timed rounds
        except Exception as exc:
            raise RmtdeployError(
                f"PyTorch ({self.backend}, {self.device}) cannot run '{label}': {str(exc).splitlines()[0][:200]}"
            ) from exc
        return call

    def conditions(self) -> dict[str, Any]:
        import torch

        out = {
            "torch_version": torch.__version__,
            "precision": self.precision,
            "compile_mode": self.compile_mode,
            "cuda_graph": self.cuda_graph,
            "input_shapes": {label: list(self.input.shape) for label in self.modules},
        }
        if self.device == "cuda":
            out.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        return out

    def _restore_modules(self) -> None:
        for module, was_training, placement in self.modules.values():
            module.train(was_training)
            if placement is not None:
                module.to(device=placement[0], dtype=placement[1])


def _graph_replay(model, x):
    """``model(x)`` captured once in a CUDA graph; the call replays it (no per-kernel launch cost)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return lambda _x=None: graph.replay()
