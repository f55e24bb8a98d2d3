"""ImageFolder directories (`root/<class>/<image>`) with the model's own timm transforms."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError


def image_folder_loader(
    root: str | os.PathLike,
    model: nn.Module,
    *,
    batch_size: int = 32,
    max_images: int | None = None,
    train: bool = False,
    shuffle: bool = False,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A loader over ``root/<class>/<image>`` with timm's eval (or train) transform for ``model``.

    ``max_images`` keeps a fixed, evenly spread subset (calibration needs a few hundred images, not all).
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise RmtdeployError(f"data directory not found: {root}")
    transform = folder_transform(model, train=train)
    try:
        dataset = ImageFolder(str(root), transform=transform, loader=read_rgb_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise RmtdeployError(
            f"{root} is not an ImageFolder (root/<class>/<image>): {str(exc).splitlines()[0]}"
        ) from exc
    if max_images is not None and len(dataset) > max_images:
        step = len(dataset) / max_images
        dataset = torch.utils.data.Subset(dataset, [int(i * step) for i in range(max_images)])
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers)


def read_rgb_image(path: str):
    """An image file as RGB (greyscale and palette files are converted); an unreadable or truncated file
    is a clear error that names it, not a crash inside the DataLoader."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")  # convert() decodes the whole file: truncation shows
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise RmtdeployError(f"cannot read image {path}: {reason}") from exc


def input_batches(loader):
    """The images of a (images, labels) loader, for BatchNorm recalibration."""
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


class FolderImages:
    """(path, label) samples read as RGB and transformed; a torch map-style dataset."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(read_rgb_image(path)), label

    def path(self, index: int) -> str:
        return self.samples[index][0]


def folder_transform(model, *, train: bool):
    """timm's eval (resize + centre crop) or train (random-resized crop, flip, jitter) transform, with the
    input size, mean/std, interpolation and crop fraction of ``model``'s config."""
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    return timm.data.create_transform(**config, is_training=train)
