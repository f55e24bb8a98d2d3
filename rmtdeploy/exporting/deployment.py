"""Exporting a model for deployment: the checks before the model loads, then the verified ONNX file with the
metadata an app needs (and the INT8 graph). The export stage (:mod:`rmtdeploy.exporting.stage`) locks
its output path around these; the bundle exports into its own staging folder with the same calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting.graph import DEFAULT_ATOL, DEFAULT_RTOL, ExportResult, export_onnx, prepare_path
from rmtdeploy.exporting.metadata import deployment_metadata
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


@dataclass
class ExportRequest:
    out: Path
    target: str | None
    pruned_dir: Path | None
    source: Any
    data: Any  # DataSource or None
    calibration: Any  # DataSource or None
    int8_path: Path | None


def int8_path(out: Path) -> Path:
    """Where the INT8 graph of ``out`` goes: ``model.onnx`` -> ``model.int8.onnx``."""
    return out.with_name(f"{out.stem}.int8{out.suffix or '.onnx'}")


def check_export(
    model, out: Path, target, data, parity_images, force, say, int8, calibration_images, method
) -> ExportRequest:
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

        say(f"checking {getattr(data, 'name', data) or DEFAULT_CALIBRATION_DATA}")
        if data is not None:
            source_data = calibration = open_data(data)
        else:
            calibration = open_data(DEFAULT_CALIBRATION_DATA)
    return ExportRequest(out, target, pruned_dir, source, source_data, calibration, quantized)


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
    result, loaded, request: ExportRequest, images: int, method: str, force: bool, check_images: int
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


def _load(pruned_dir: Path | None, source) -> tuple[Any, dict | None, str, str, list[str] | None]:
    """The model in eval mode, its plan (None when dense), timm name, weight source and, for a dense
    source that names them (a timm config beside a checkpoint), its class names."""
    if pruned_dir is not None:
        from rmtdeploy.pruning.plan import load_pruned

        result = load_pruned(pruned_dir)
        return (
            result.model.eval(),
            result.plan,
            result.plan["model"],
            str(result.plan.get("weights", "?")),
            None,
        )
    loaded = source.load()
    labels = list(loaded.labels) if getattr(loaded, "labels", None) else None
    return loaded.model.eval(), None, loaded.name, loaded.weights, labels


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


def run_export(
    request: ExportRequest,
    *,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    labels: list[str] | None = None,
    batch: int | None = None,
    dynamic_batch: bool | None = None,
    simplify: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_method: str = "minmax",
    force: bool = False,
    status: Status | None = None,
) -> ExportRun:
    """Export a checked request (:func:`check_export`): load the model, export and verify it with its
    deployment metadata, and quantize it when the request asks for INT8. The caller holds the output
    path (the export stage locks it; the bundle writes into its own staging folder)."""
    say = status or (lambda text: None)
    started = time.perf_counter()
    out, int8 = request.out, request.int8_path is not None
    say("loading the model")
    loaded, plan, name, weights, source_labels = _load(request.pruned_dir, request.source)
    labels = labels if labels is not None else source_labels
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
