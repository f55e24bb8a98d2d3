"""Where a stage's images come from: ``open_data(NAME or DIR)`` -> a checked :class:`DataSource`.

One data source serves every stage that reads images: ``prune --calibration`` (BatchNorm statistics, the
dynamic strategy's distillation), ``finetune --data`` (training and validation) and, later, INT8
calibration. It is opened and checked before any model is loaded; it is shaped for a model (input size,
mean/std, interpolation, crop, from timm's config for that model) only when a stage asks for a split.

* A built-in dataset by name (``rmtdeploy.data.builtin``): its fixed train/val split.
* An ImageFolder directory: ``DIR/train/<class>/...`` and ``DIR/val/<class>/...`` when both exist,
  else ``DIR/<class>/...`` split per class by a seeded fraction (``val_fraction``), so the held-out
  images are the same in every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmtdeploy.data.builtin import SPLIT_SEED, SPLITS, get_dataset
from rmtdeploy.data.folders import FolderImages, folder_transform
from rmtdeploy.data.images import check_image_files, list_image_folder
from rmtdeploy.errors import RmtdeployError

DEFAULT_VAL_FRACTION = 0.1
VAL_FOLDER_NAMES = ("val", "validation")


@dataclass(frozen=True)
class DataSource:
    """A checked image source: its classes, its split, and how to read a split for a model."""

    name: str  # the built-in name or the folder path, as given
    kind: str  # "builtin" or "folder"
    classes: tuple[str, ...]
    layout: str  # how the train/val split was made (reports say it)
    counts: dict[str, int]
    convert_grey: bool = False
    _samples: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.name,
            "kind": self.kind,
            "classes": self.num_classes,
            "layout": self.layout,
            "images": dict(self.counts),
        }

    def dataset(self, split: str, model, *, train: bool = False):
        """``split`` ("train" / "val") as (image tensor, label) items shaped for ``model``; ``train``
        applies the training augmentation (timm's for folders, small shifts for the digit sets)."""
        if split not in SPLITS:
            raise RmtdeployError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
        if self.kind == "builtin":
            from rmtdeploy.data.builtin import builtin_dataset, model_input_spec

            return builtin_dataset(self.name, split, augment=train, **model_input_spec(model))
        return FolderImages(self._samples[split], folder_transform(model, train=train))


def open_data(
    data: str | os.PathLike | DataSource,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    convert_grey: bool = False,
    check_files: bool = True,
    split: bool = True,
    progress: Callable[[int], Callable[..., object] | None] | None = None,
) -> DataSource:
    """A built-in dataset's name or an ImageFolder directory, checked (every file's header and end when
    ``check_files``; see :mod:`rmtdeploy.data.images`) before any model is loaded. ``split=False``: a
    one-folder set is not split (its "train" split is every image, "val" is empty; for calibration)."""
    if isinstance(data, DataSource):
        return data
    if not 0 < val_fraction < 1:
        raise RmtdeployError(f"{{param}} must lie in (0, 1), got {val_fraction}", param="val_fraction")
    text = os.fspath(data)
    from rmtdeploy.data.builtin import BUILTIN_DATASETS

    if text in BUILTIN_DATASETS:
        return _builtin_source(text)
    if os.sep not in text and not Path(text).exists():
        names = ", ".join(sorted(BUILTIN_DATASETS))
        raise RmtdeployError(f"data '{text}' is neither a built-in dataset ({names}) nor a directory")
    root = Path(text)
    splits, layout = _folder_splits(root, val_fraction if split else None)
    if check_files:
        paths = [path for split in SPLITS for path, _ in splits[split]]
        check_image_files(paths, convert_grey=convert_grey, progress=progress)
    return DataSource(
        name=text,
        kind="folder",
        classes=splits.pop("classes"),
        layout=layout,
        counts={split: len(samples) for split, samples in splits.items()},
        convert_grey=convert_grey,
        _samples=splits,
    )


def _builtin_source(name: str) -> DataSource:
    dataset = get_dataset(name)
    return DataSource(
        name=name,
        kind="builtin",
        classes=dataset.class_names or tuple(str(label) for label in range(dataset.num_classes)),
        layout=dataset.layout,
        counts={split: len(dataset.split_indices(split)) for split in SPLITS},
    )


def _folder_splits(root: Path, val_fraction: float | None) -> tuple[dict, str]:
    val_dir = next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train, val = list_image_folder(root / "train"), list_image_folder(val_dir)
        if train.classes != val.classes:
            only = sorted(set(train.classes) ^ set(val.classes))[:5]
            raise RmtdeployError(
                f"{root}/train and {val_dir} have different class folders (e.g. {', '.join(only)})"
            )
        splits = {"classes": train.classes, "train": train.samples, "val": val.samples}
        return splits, f"folders train/ and {val_dir.name}/"
    listing = list_image_folder(root)
    if val_fraction is None:
        return {"classes": listing.classes, "train": listing.samples, "val": ()}, "one folder, not split"
    labels = np.array([label for _, label in listing.samples])
    rng = np.random.default_rng(SPLIT_SEED)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in range(len(listing.classes)):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise RmtdeployError(
                f"class folder {root / listing.classes[label]} holds one image; a train/val split needs two "
                "per class (or give train/ and val/ folders)"
            )
        count = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        is_val[rng.permutation(members)[:count]] = True
    samples = listing.samples
    splits = {
        "classes": listing.classes,
        "train": tuple(s for s, v in zip(samples, is_val, strict=True) if not v),
        "val": tuple(s for s, v in zip(samples, is_val, strict=True) if v),
    }
    return splits, f"one folder split per class, val fraction {val_fraction:g} (seed {SPLIT_SEED})"


class ImageBatches:
    """Image batches of an evenly spread subset of ``dataset``, streamed anew on every iteration (BatchNorm
    recalibration and the dynamic strategy's distillation pass over them several times; nothing is held)."""

    def __init__(self, dataset, images: int, *, batch_size: int = 32, workers: int = 0):
        count = min(images, len(dataset))
        step = len(dataset) / count
        self.indices = [int(i * step) for i in range(count)]
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        import torch

        subset = torch.utils.data.Subset(self.dataset, self.indices)
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, num_workers=self.workers)
        for images, _ in loader:
            yield images


def calibration_batches(data: DataSource, model, images: int, *, batch_size: int = 32) -> ImageBatches:
    """``images`` training images of ``data`` with the eval transform for ``model``, streamed."""
    return ImageBatches(data.dataset("train", model), images, batch_size=batch_size)
