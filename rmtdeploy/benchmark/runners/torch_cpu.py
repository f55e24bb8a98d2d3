"""PyTorch on the CPU: in-memory modules in eval mode under ``inference_mode``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

from rmtdeploy.benchmark.runners.base import DEFAULT_INPUT_SHAPE, Runner


class TorchCpuRunner(Runner):
    """``nn.Module`` objects called on one fixed random batch.

    ``torch.set_num_threads`` is process-wide and ``eval()`` changes the caller's modules, so both are
    restored when the ``with`` block ends.
    """

    backend = "torch"
    device = "cpu"

    def __init__(
        self, *, threads: int, batch: int = 1, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, seed: int = 0
    ):
        import torch

        self.threads = threads
        self.input = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
        self.modules: dict[str, Any] = {}
        self._stack = ExitStack()

    def __enter__(self) -> TorchCpuRunner:
        import torch

        self._stack.callback(torch.set_num_threads, torch.get_num_threads())
        self._stack.callback(self._restore_modes)
        torch.set_num_threads(self.threads)
        self._stack.enter_context(torch.inference_mode())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def bind(self, label: str, model: Any) -> Callable[[], object]:
        self.modules[label] = (model, model.training)
        model.eval()
        return partial(model, self.input)

    def conditions(self) -> dict[str, Any]:
        import torch

        return {
            "torch_version": torch.__version__,
            "input_shapes": {label: list(self.input.shape) for label in self.modules},
        }

    def _restore_modes(self) -> None:
        for module, was_training in self.modules.values():
            module.train(was_training)
