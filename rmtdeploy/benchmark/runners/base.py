"""The one interface every backend runner implements; the timing protocol never looks past it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

DEFAULT_INPUT_SHAPE = (3, 224, 224)


class Runner(ABC):
    """Runs the models of one backend on one device, one inference per call.

    A runner only prepares models; :func:`rmtdeploy.benchmark.protocol.run_rounds` does the timing,
    the interleaving and the warm-up, the same for every backend. A runner says:

    * ``backend`` and ``device``: the report's ``conditions["backend"]`` and ``["device"]``;
    * :meth:`bind`: load or compile one model, fix its input, and return a call without arguments
      that runs one inference and returns when its result is ready;
    * :meth:`conditions`: what this backend adds to the report once its models are bound (library
      version, providers, input shapes, ...);
    * ``with runner:``: process-wide state the timing needs (thread counts, inference mode), set on
      entry and restored on exit. The default does nothing.
    """

    backend: ClassVar[str]
    device: ClassVar[str]

    @abstractmethod
    def bind(self, label: str, model: Any) -> Callable[[], object]:
        """Prepare ``model`` (saved as ``label``) and return one inference as a call."""

    @abstractmethod
    def conditions(self) -> dict[str, Any]:
        """What the report records about this backend, for the models bound so far."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None
