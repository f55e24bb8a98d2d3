"""The export stage as one library call: ``export(model, "model.onnx", target="jetson") -> ExportRun``.

``model`` is a pruned or fine-tuned folder (what ``rmtdeploy prune`` / ``finetune`` wrote) or a dense
model (a name, :class:`~rmtdeploy.models.ModelSource` or :class:`~rmtdeploy.models.LoadedModel`).
Everything that can be checked without the model is checked first (output path, target, folder, data
files), the output path is locked for the run, and the file appears only once it is verified: parity
with PyTorch on random inputs and, with ``data``, on real images (:mod:`~rmtdeploy.exporting.parity`),
with the deployment metadata an app needs in the graph (:mod:`~rmtdeploy.exporting.metadata`).
``rmtdeploy export`` is a thin shell over this function.
"""

from __future__ import annotations

import os
from pathlib import Path

from rmtdeploy.exporting.deployment import (
    DEFAULT_CALIBRATION_DATA,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_PARITY_IMAGES,
    ExportRun,
    Status,
    check_export,
    int8_path,
    run_export,
)
from rmtdeploy.exporting.graph import DEFAULT_ATOL, DEFAULT_RTOL
from rmtdeploy.io import locked
from rmtdeploy.models import LoadedModel, ModelSource


def export(
    model: str | os.PathLike | ModelSource | LoadedModel,
    out: str | os.PathLike,
    *,
    target: str | None = None,
    data: str | os.PathLike | None = None,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    labels: list[str] | None = None,
    batch: int | None = None,
    dynamic_batch: bool | None = None,
    simplify: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    int8: bool = False,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_method: str = "minmax",
    force: bool = False,
    status: Status | None = None,
) -> ExportRun:
    """Export ``model`` to the ONNX file ``out``, verified and carrying its deployment metadata.

    ``model``: a :class:`~pathlib.Path` (or a string naming an existing directory) is a pruned or
    fine-tuned folder; anything else is a dense model source. ``target`` sets opset, batch and the
    backend's export forms (:func:`~rmtdeploy.exporting.export_onnx`). ``data`` (a built-in dataset's
    name or an ImageFolder directory) adds a parity check on ``parity_images`` of its validation images.
    ``labels`` overrides the class names written for apps. ``int8`` also writes ``<out>.int8.onnx``
    (Q/DQ, :mod:`~rmtdeploy.exporting.int8`) calibrated on ``calibration_images`` training images of
    ``data`` (of the built-in ``mnist5k`` when no data is given; the result says so), and with ``data``
    measures its top-1 against the fp32 graph's. Existing files are replaced only with ``force``.
    """
    say = status or (lambda text: None)
    out = Path(out)
    request = check_export(model, out, target, data, parity_images, force, say, int8, calibration_images,
                           calibration_method)  # fmt: skip
    with locked(out):
        return run_export(request, parity_images=parity_images, labels=labels, batch=batch, dynamic_batch=dynamic_batch,
                          simplify=simplify, atol=atol, rtol=rtol, calibration_images=calibration_images,
                          calibration_method=calibration_method, force=force, status=status)  # fmt: skip


# Besides the stage call, what its callers (the CLI, the pipeline) use.
__all__ = [
    "DEFAULT_ATOL", "DEFAULT_CALIBRATION_DATA", "DEFAULT_CALIBRATION_IMAGES", "DEFAULT_PARITY_IMAGES", "DEFAULT_RTOL",
    "ExportRun", "export", "int8_path",
]  # fmt: skip
