"""Wesnoth units from the Debian package wesnoth-1.16-data: the package's layout read for real (a small
.deb written here in that layout: an ar archive around data.tar.xz), sprites composited onto white, the
split by unit type, the refusals, and (slow, with the real package) the counts the reader was written for."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rmtdeploy.data import get_dataset
from rmtdeploy.data.fetch import locate
from rmtdeploy.data.wesnoth import (
    CLASSES,
    TRAIN_COUNT,
    UNITS_FOLDER,
    WESNOTH_DEB,
    read_wesnoth_units,
    split_by_unit,
    unit_of,
)
from rmtdeploy.errors import RmtdeployError


def _sprite(colour, size=(72, 72), mode="RGBA") -> bytes:
    """A sprite: transparent, with a filled square of ``colour`` in the middle."""
    from PIL import Image

    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (20, 20), (*colour, 255)), (26, 26))
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _write_deb(path: Path, sprites: dict[str, bytes], data_name: str = "data.tar.xz") -> Path:
    """A .deb in Debian's layout: debian-binary, control.tar.xz, then the data tarball holding ``sprites``
    (paths under the units folder)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        members = {"usr/share/doc/wesnoth-1.16-data/copyright": b"GPL-2+",
                   **{UNITS_FOLDER + rel: data for rel, data in sprites.items()}}  # fmt: skip
        for name, data in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:xz"):
        pass
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", control.getvalue()),
        (data_name, buffer.getvalue()),
    ]
    path.write_bytes(b"!<arch>\n" + b"".join(_ar_member(n, d) for n, d in members))
    return path


SPRITES = {
    "dwarves/fighter.png": _sprite((200, 0, 0)),
    "dwarves/fighter-attack-1.png": _sprite((190, 0, 0)),
    "dwarves/guard+female-defend.png": _sprite((180, 0, 0), mode="P"),  # palette PNGs ship too
    "monsters/jinn/jinn-attack.png": _sprite((0, 200, 0)),  # a unit type's own folder
    "monsters/bat.png": _sprite((0, 190, 0)),
    "monsters/gryphon-flying.png": _sprite((0, 0, 200), size=(96, 72)),  # not 72×72: left out
    "transport/galleon.png": _sprite((9, 9, 9)),  # not one of the 18 factions: left out
    "dwarves/fighter.txt": b"not an image",
}


def test_the_package_layout_is_read_sprite_by_sprite_onto_white(tmp_path):
    images, labels, units = read_wesnoth_units(_write_deb(tmp_path / "w.deb", SPRITES))
    assert images.shape == (5, 72, 72, 3) and images.dtype == np.uint8
    assert [CLASSES[label] for label in labels] == ["dwarves"] * 3 + ["monsters"] * 2
    assert units == ["dwarves/fighter", "dwarves/fighter", "dwarves/guard", "monsters/jinn", "monsters/bat"]
    assert images[0, 0, 0].tolist() == [255, 255, 255]  # transparent: white
    assert images[0, 36, 36].tolist() == [200, 0, 0] and images[3, 36, 36].tolist() == [0, 200, 0]
    assert images[2, 36, 36].tolist() == [180, 0, 0]  # the palette sprite too


def test_unit_types_are_the_file_name_before_its_frame_or_their_own_folder():
    assert unit_of(["archer+female-bow-attack1.png"]) == "archer"
    assert unit_of(["guard2.png"]) == "guard"
    assert unit_of(["soulless-bat-ne-4.png"]) == "soulless"
    assert unit_of(["jinn", "jinn-attack-3.png"]) == "jinn"


def test_the_split_holds_out_whole_unit_types_a_quarter_of_each_class_and_is_fixed():
    labels = np.array([0] * 12 + [1] * 6)
    units = [f"a/u{i // 2}" for i in range(12)] + [f"b/v{i // 3}" for i in range(6)]  # 6 types, 2 types
    held = split_by_unit(labels, units, 0.25, seed=7)
    for unit in set(units):  # every frame of a type on one side
        sides = {bool(h) for h, u in zip(held, units, strict=True) if u == unit}
        assert len(sides) == 1, unit
    held_types = {u for h, u in zip(held, units, strict=True) if h}
    assert len({u for u in held_types if u.startswith("a/")}) == 2  # round(6 × 0.25)
    assert len({u for u in held_types if u.startswith("b/")}) == 1  # at least one
    assert np.array_equal(held, split_by_unit(labels, units, 0.25, seed=7))


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"plain text, not an archive", "is not a Debian package (no ar archive header)"),
        (b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n"), "holds no data.tar member"),
        (b"!<arch>\n" + b"x" * 60, "as a Debian package"),  # an ar header that is not one
    ],
)
def test_a_file_that_is_not_the_package_is_refused_in_one_line(tmp_path, content, phrase):
    path = tmp_path / "w.deb"
    path.write_bytes(content)
    with pytest.raises(RmtdeployError, match=re.escape(phrase)) as error:
        read_wesnoth_units(path)
    assert "\n" not in str(error.value)


def test_a_cut_package_and_one_without_sprites_are_refused(tmp_path):
    whole = _write_deb(tmp_path / "whole.deb", SPRITES).read_bytes()
    cut = tmp_path / "cut.deb"
    cut.write_bytes(whole[: len(whole) - 400])
    with pytest.raises(RmtdeployError, match="cannot read .* as a Debian package"):
        read_wesnoth_units(cut)
    with pytest.raises(RmtdeployError, match="holds no 72×72 sprites"):
        read_wesnoth_units(_write_deb(tmp_path / "empty.deb", {"transport/galleon.png": _sprite((1, 1, 1))}))


def test_without_the_package_the_dataset_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RMTDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(WESNOTH_DEB.env, raising=False)
    dataset = get_dataset("wesnoth-units")
    assert dataset.num_classes == 18 and dataset.native_size == (72, 72) and dataset.mirror
    with pytest.raises(RmtdeployError, match="rmtdeploy datasets fetch wesnoth-units"):
        dataset.read()


@pytest.mark.slow
def test_real_package_holds_the_sprites_the_reader_was_written_for():
    if locate(WESNOTH_DEB) is None:
        pytest.skip(
            "wesnoth-1.16-data is not fetched (rmtdeploy datasets fetch wesnoth-units, or RMTDEPLOY_WESNOTH_DEB)"
        )
    dataset = get_dataset("wesnoth-units")
    images, labels = dataset.arrays()
    train, val = dataset.split_indices("train"), dataset.split_indices("val")
    assert images.shape == (4378, 72, 72, 3) and (len(train), len(val)) == (TRAIN_COUNT, 4378 - TRAIN_COUNT)
    assert set(np.unique(labels[val])) == set(range(18))  # every faction has held-out unit types
    assert np.bincount(labels, minlength=18).min() >= 50
