"""Image data for calibration, fine-tuning and benchmarks.

Two sources: ImageFolder directories of the user's own images (``image_folder_loader``), and named
built-in datasets made of real images that installed packages ship (``builtin_loader``; see
``docs/data.md``), so that offline machines, tests and benchmarks all measure on real data.
"""

from rmtdeploy.data.builtin import (
    BUILTIN_DATASETS,
    BuiltinDataset,
    ImageArrayDataset,
    builtin_dataset,
    builtin_loader,
    dataset_names,
    get_dataset,
    register_dataset,
)
from rmtdeploy.data.folders import image_folder_loader, input_batches

__all__ = [
    "BUILTIN_DATASETS",
    "BuiltinDataset",
    "ImageArrayDataset",
    "builtin_dataset",
    "builtin_loader",
    "dataset_names",
    "get_dataset",
    "image_folder_loader",
    "input_batches",
    "register_dataset",
]
