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

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting.graph import DEFAULT_ATOL, DEFAULT_RTOL, ExportResult, export_onnx, prepare_path
from rmtdeploy.exporting.metadata import deployment_metadata
from rmtdeploy.io import locked
from rmtdeploy.models import LoadedModel, ModelSource, model_source

DEFAULT_PARITY_IMAGES = 256
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model": self.model_name,
            "weights": self.weights,
            "pruned_from": self.pruned_from,
            "export": self.result.to_dict(),
            "metadata": self.metadata,
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
    force: bool = False,
    status: Status | None = None,
) -> ExportRun:
    """Export ``model`` to the ONNX file ``out``, verified and carrying its deployment metadata.

    ``model``: a :class:`~pathlib.Path` (or a string naming an existing directory) is a pruned or
    fine-tuned folder; anything else is a dense model source. ``target`` sets opset, batch and the
    backend's export forms (:func:`~rmtdeploy.exporting.export_onnx`). ``data`` (a built-in dataset's
    name or an ImageFolder directory) adds a parity check on ``parity_images`` of its validation images.
    ``labels`` overrides the class names written for apps. An existing ``out`` is replaced only with
    ``force``.
    """
    say = status or (lambda text: None)
    started = time.perf_counter()
    out = Path(out)
    target, pruned_dir, source, source_data = _check(model, out, target, data, parity_images, force, say)
    with locked(out):
        say("loading the model")
        loaded, plan, name, weights = _load(pruned_dir, source)
        metadata = deployment_metadata(loaded, model_name=name, weights=weights, plan=plan, labels=labels)
        if source_data is not None and source_data.num_classes != int(getattr(loaded, "num_classes", 0) or 0):
            raise RmtdeployError(
                f"the model predicts {getattr(loaded, 'num_classes', '?')} classes but {source_data.name} has "
                f"{source_data.num_classes}: parity on its images would compare the wrong head"
            )
        if labels is not None and len(labels) != int(getattr(loaded, "num_classes", 0) or 0):
            raise RmtdeployError(
                f"{len(labels)} labels given for a model with {getattr(loaded, 'num_classes', '?')} classes",
                param="labels",
            )
        say("exporting and verifying")
        result = export_onnx(
            loaded,
            out,
            target=target,
            batch=batch,
            dynamic_batch=dynamic_batch,
            simplify=simplify,
            atol=atol,
            rtol=rtol,
            overwrite=force,
            metadata=metadata,
            images=None if source_data is None else _image_batches(source_data, loaded, parity_images),
            images_name=None if source_data is None else source_data.name,
        )
    return ExportRun(
        path=out,
        result=result,
        metadata=metadata,
        model_name=name,
        weights=weights,
        pruned_from=None if pruned_dir is None else str(pruned_dir),
        wall_s=time.perf_counter() - started,
    )


def _check(model, out: Path, target, data, parity_images: int, force: bool, say: Status):
    """Everything that can be checked before the model loads: output path, target, model, data files."""
    prepare_path(out, force)
    if parity_images < 1:
        raise RmtdeployError(f"{{param}} must be >= 1, got {parity_images}", param="parity_images")
    if target is not None:
        from rmtdeploy.targets import load_target

        target = load_target(target).name
    pruned_dir, source = _model_input(model)
    source_data = None
    if data is not None:
        from rmtdeploy.data import open_data

        say(f"checking {data}")
        source_data = open_data(data)
    return target, pruned_dir, source, source_data


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
    import torch

    dataset = source.dataset("val", model)
    if len(dataset) == 0:
        raise RmtdeployError(f"{source.name} has no validation images to check parity on")
    subset = torch.utils.data.Subset(dataset, range(min(count, len(dataset))))
    for images, _ in torch.utils.data.DataLoader(subset, batch_size=PARITY_BATCH):
        yield images
