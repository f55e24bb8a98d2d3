"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for the module's tests: on a small shared machine, torch's default thread pool
    spin-waits against other processes and runs the same CPU work up to 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    """Two seeded 224×224 RGB images: the inputs the attention-adapter tests compare outputs on."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def load_benchmark_script(name: str):
    """Yield ``benchmarks/<name>.py`` as a module (for module-scoped fixtures); the scripts import their sibling
    ``_results``, so ``benchmarks/`` is on the path while it is in use."""
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(benchmarks))
        spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
