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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting.graph import DEFAULT_ATOL, DEFAULT_RTOL, ExportResult, export_onnx, prepare_path
from rmtdeploy.exporting.metadata import deployment_metadata
from rmtdeploy.io import locked
from rmtdeploy.models import LoadedModel, ModelSource, model_source

DEFAULT_PARITY_IMAGES = 256
DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_CALIBRATION_DATA = "mnist5k"  # a built-in real set: calibration without --data still sees real images
PARITY_BATCH = 32

Status = Callable[[str], None]


@dataclass
class ExportRun:
    """A finished export: the verified file, how it was made, and what an app reads from it."""

    path: Path
    result: ExportResult
    metadata: dict[str, str]
    model_name: str
    weights: str
    pruned_from: str | None  # the pruned / fine-tuned folder, or None for a dense export
    wall_s: float
    int8: dict[str, Any] | None = None  # Int8Result.to_dict() + default_calibration (+ check with data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model": self.model_name,
            "weights": self.weights,
            "pruned_from": self.pruned_from,
            "export": self.result.to_dict(),
            "metadata": self.metadata,
            "int8": self.int8,
            "wall_s": round(self.wall_s, 2),
        }


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
    started = time.perf_counter()
    out = Path(out)
    request = _check(model, out, target, data, parity_images, force, say, int8, calibration_images,
                     calibration_method)  # fmt: skip
    with locked(out):
        say("loading the model")
        loaded, plan, name, weights = _load(request.pruned_dir, request.source)
        _check_against_model(loaded, request.data, labels)
        metadata = deployment_metadata(loaded, model_name=name, weights=weights, plan=plan, labels=labels)
        say("exporting and verifying")
        result = export_onnx(
            loaded, out, target=request.target, batch=batch, dynamic_batch=dynamic_batch, simplify=simplify,
            atol=atol, rtol=rtol, overwrite=force, metadata=metadata,
            images=None if request.data is None else _image_batches(request.data, loaded, parity_images),
            images_name=None if request.data is None else request.data.name,
        )  # fmt: skip
        quantized = None
        if int8:
            say(f"quantizing to INT8 on {request.calibration.name}")
            quantized = _quantize(
                result, loaded, request, calibration_images, calibration_method, force, parity_images
            )
    return ExportRun(
        path=out,
        result=result,
        metadata=metadata,
        model_name=name,
        weights=weights,
        pruned_from=None if request.pruned_dir is None else str(request.pruned_dir),
        wall_s=time.perf_counter() - started,
        int8=quantized,
    )


@dataclass
class _Request:
    target: str | None
    pruned_dir: Path | None
    source: Any
    data: Any  # DataSource or None
    calibration: Any  # DataSource or None
    int8_path: Path | None


def int8_path(out: Path) -> Path:
    """Where the INT8 graph of ``out`` goes: ``model.onnx`` -> ``model.int8.onnx``."""
    return out.with_name(f"{out.stem}.int8{out.suffix or '.onnx'}")


def _check(
    model, out: Path, target, data, parity_images, force, say, int8, calibration_images, method
) -> _Request:
    """Everything that can be checked before the model loads: output paths, target, model, data files."""
    from rmtdeploy.exporting.int8 import CALIBRATION_METHODS

    prepare_path(out, force)
    quantized = int8_path(out) if int8 else None
    if quantized is not None:
        prepare_path(quantized, force)
        if method not in CALIBRATION_METHODS:
            raise RmtdeployError(f"{{param}} must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'",
                                 param="calibration_method")  # fmt: skip
        if calibration_images < 1:
            raise RmtdeployError(
                f"{{param}} must be >= 1, got {calibration_images}", param="calibration_images"
            )
    if parity_images < 1:
        raise RmtdeployError(f"{{param}} must be >= 1, got {parity_images}", param="parity_images")
    if target is not None:
        from rmtdeploy.targets import load_target

        target = load_target(target).name
    pruned_dir, source = _model_input(model)
    source_data = calibration = None
    if data is not None or int8:
        from rmtdeploy.data import open_data

        say(f"checking {data or DEFAULT_CALIBRATION_DATA}")
        if data is not None:
            source_data = calibration = open_data(data)
        else:
            calibration = open_data(DEFAULT_CALIBRATION_DATA)
    return _Request(target, pruned_dir, source, source_data, calibration, quantized)


def _check_against_model(loaded, data, labels) -> None:
    classes = int(getattr(loaded, "num_classes", 0) or 0)
    if data is not None and data.num_classes != classes:
        raise RmtdeployError(
            f"the model predicts {classes} classes but {data.name} has {data.num_classes}: parity on its "
            "images would compare the wrong head"
        )
    if labels is not None and len(labels) != classes:
        raise RmtdeployError(f"{len(labels)} labels given for a model with {classes} classes", param="labels")


def _quantize(
    result, loaded, request: _Request, images: int, method: str, force: bool, check_images: int
) -> dict:
    """The INT8 graph, and with data its top-1 on the validation images beside the fp32 graph's."""
    from rmtdeploy.exporting.int8 import classify, quantize_int8

    static = isinstance(result.input_shape[0], int)
    batch_size = result.input_shape[0] if static else PARITY_BATCH
    batches = (
        x.numpy()
        for x, _ in _labelled_batches(request.calibration, loaded, "train", images, batch_size, static)
    )
    quantized = quantize_int8(result.path, request.int8_path, batches, calibration=request.calibration.name,
                              method=method, backend=result.backend, overwrite=force)  # fmt: skip
    record = {**quantized.to_dict(), "default_calibration": request.data is None}
    if request.data is not None:
        val = [(x.numpy(), y.numpy()) for x, y in
               _labelled_batches(request.data, loaded, "val", check_images, batch_size, static)]  # fmt: skip
        labels = np.concatenate([y for _, y in val])
        fp32, int8 = classify(result.path, val), classify(quantized.path, val)
        record["check"] = {"data": request.data.name, "images": int(labels.size),
                           "top1_fp32": round(float((fp32 == labels).mean() * 100), 2),
                           "top1_int8": round(float((int8 == labels).mean() * 100), 2),
                           "agreement": round(float((fp32 == int8).mean() * 100), 2)}  # fmt: skip
    return record


def _model_input(model) -> tuple[Path | None, ModelSource | LoadedModel | None]:
    """A pruned folder (checked: it exists and holds a plan) or a dense source (checked: name, weights)."""
    if isinstance(model, Path) or (isinstance(model, str) and Path(model).is_dir()):
        from rmtdeploy.pruning.plan import read_plan

        directory = Path(model)
        if not directory.is_dir():
            raise RmtdeployError(f"pruned-model directory not found: {directory}", param="pruned")
        read_plan(directory)
        return directory, None
    source = model_source(model)
    source.check()
    return None, source


def _load(pruned_dir: Path | None, source) -> tuple[Any, dict | None, str, str]:
    """The model in eval mode, its plan (None when dense), timm name and weight source."""
    if pruned_dir is not None:
        from rmtdeploy.pruning.plan import load_pruned

        result = load_pruned(pruned_dir)
        return result.model.eval(), result.plan, result.plan["model"], str(result.plan.get("weights", "?"))
    loaded = source.load()
    return loaded.model.eval(), None, loaded.name, loaded.weights


def _image_batches(source, model, count: int) -> Iterator:
    """The first ``count`` validation images (the split is seeded, so the same ones every run)."""
    for images, _ in _labelled_batches(source, model, "val", count, PARITY_BATCH, False):
        yield images


def _labelled_batches(source, model, split: str, count: int, batch_size: int, exact: bool) -> Iterator:
    """The first ``count`` images of ``split`` with their labels; ``exact``: only full batches (a graph
    with a static batch takes no other size)."""
    import torch

    dataset = source.dataset(split, model)
    if len(dataset) == 0:
        raise RmtdeployError(f"{source.name} has no {split} images")
    subset = torch.utils.data.Subset(dataset, range(min(count, len(dataset))))
    yield from torch.utils.data.DataLoader(subset, batch_size=batch_size, drop_last=exact)
