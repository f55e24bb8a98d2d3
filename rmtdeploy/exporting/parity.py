"""Parity: does the ONNX graph compute what the PyTorch model computes, on the inputs it will see?

Every export is compared on seeded random batches (every backbone path gets exercised, whatever the
data) and, when images are given, on real ones (the activations an app will feed it; a graph that only
drifts on natural statistics shows here). Per comparison: the largest absolute difference and the
scale it is read against, the smallest per-image cosine between the output vectors, and how often the
two agree on the top-1 class. An output beyond ``atol + rtol * |reference|`` anywhere fails the export.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against PyTorch over some inputs; ``to_dict`` is JSON-ready."""

    inputs: str  # "random" or the data source's name
    images: int
    max_abs_diff: float
    reference_max_abs: float  # the scale of PyTorch's outputs, to read the difference against
    min_cosine: float  # the worst image's cosine between ORT's and PyTorch's first output
    top1_agreement: float  # share of images whose argmax class is the same in both
    atol: float
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.inputs} ({self.images} images): max |diff| {self.max_abs_diff:.2e} for outputs up to "
            f"{self.reference_max_abs:.3g}, min cosine {self.min_cosine:.6f}, top-1 agreement "
            f"{self.top1_agreement:.2%}"
        )


class RandomParityError(RmtdeployError):
    """The graph computes something else on random inputs: wrong whatever the data (no image was read)."""


def compare(
    model: nn.Module,
    session,
    batches: Iterable[torch.Tensor],
    *,
    inputs: str,
    atol: float,
    rtol: float,
) -> Parity:
    """Run every batch through ``model`` (eval, no grad) and the ORT ``session``; raise
    :class:`RmtdeployError` at the first output beyond tolerance, naming the batch and the numbers."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    input_name = session.get_inputs()[0].name
    worst, scale, min_cos, agree, images = 0.0, 0.0, 1.0, 0, 0
    for batch in batches:
        with torch.no_grad():
            ref = model(batch.to(device))
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        try:
            outs = session.run(None, {input_name: batch.numpy()})
        except Exception as exc:
            raise RmtdeployError(
                f"ONNX Runtime failed on a batch of {len(batch)}: {str(exc).splitlines()[0][:240]}"
            ) from exc
        for index, (ref_t, out) in enumerate(zip(refs, outs, strict=True)):
            ref_np = ref_t.detach().float().cpu().numpy()
            if out.shape != ref_np.shape:
                raise RmtdeployError(
                    f"ONNX output shape {out.shape} differs from PyTorch {ref_np.shape} on a batch of {len(batch)}"
                )
            diff = np.abs(out.astype(np.float64) - ref_np)
            worst = max(worst, float(diff.max()))
            scale = max(scale, float(np.abs(ref_np).max()))
            if not np.all(diff <= atol + rtol * np.abs(ref_np)):
                raise (RandomParityError if inputs == "random" else RmtdeployError)(
                    f"ONNX export does not match PyTorch on {inputs} inputs (batch of {len(batch)}): max |diff| "
                    f"{float(diff.max()):.3g} for outputs up to {float(np.abs(ref_np).max()):.3g} "
                    f"(atol={atol:g}, rtol={rtol:g})"
                )
            if index == 0:
                flat_ref, flat_out = (
                    ref_np.reshape(len(ref_np), -1),
                    out.reshape(len(out), -1).astype(np.float64),
                )
                min_cos = min(min_cos, float(_cosines(flat_ref, flat_out).min()))
                agree += int((flat_ref.argmax(1) == flat_out.argmax(1)).sum())
        images += len(batch)
    if images == 0:
        raise RmtdeployError(f"no {inputs} images to compare the ONNX graph on")
    return Parity(inputs, images, worst, scale, min_cos, agree / images, atol, rtol)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    # Two all-zero vectors (a zero-initialised head) are the same vector.
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)
