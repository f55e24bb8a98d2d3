"""Wesnoth units: the unit sprites of Battle for Wesnoth, from the Debian package ``wesnoth-1.16-data``.

A harder task than the digits, at more than 32 px: 72×72 colour sprites, drawn by the game's artists,
each labelled by the faction folder it ships in (drakes, dwarves, elves, goblins, human loyalists, magi,
outlaws, ...). A faction holds many unit types, and each type many frames (standing, attacking, defending,
dying), so a random split would put frames of the same unit on both sides: the split is **by unit type**
(a quarter of each faction's types held out, drawn once with ``SPLIT_SEED``), and a model must tell the
faction of units it has never seen. 1-nearest-neighbour on pixels gets about half of them right.

Layout: the ``.deb`` is an ``ar`` archive whose ``data.tar.xz`` holds
``./usr/share/games/wesnoth/1.16/data/core/images/units/<faction>/[<unit>/]<unit>[-<frame>].png``;
RGBA or palette PNGs, composited onto white. Only the 72×72 sprites are read (4,378 of about 5,800: the rest
are larger units and effects), of the 18 factions with at least 50 of them and 3 unit types. Reading
decompresses the package's data (about 10 s), once per process. The art is GPL-2+ (the package's
copyright file).
"""

from __future__ import annotations

import io
import lzma
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from rmtdeploy.data.builtin import SPLIT_SEED, register_dataset
from rmtdeploy.data.fetch import DatasetFile, verified
from rmtdeploy.errors import RmtdeployError

WESNOTH_DEB = DatasetFile(
    filename="wesnoth-1.16-data_1.16.9-1_all.deb",
    url="https://deb.debian.org/debian/pool/main/w/wesnoth-1.16/wesnoth-1.16-data_1.16.9-1_all.deb",
    sha256="1012b964bd412a6770685e3324ae3b61e176caff7846192d1ee63d55cd621e26",
    size=146_229_044,
    env="RMTDEPLOY_WESNOTH_DEB",
    origin="the Debian package wesnoth-1.16-data 1:1.16.9-1",
)
UNITS_FOLDER = "usr/share/games/wesnoth/1.16/data/core/images/units/"
CLASSES = (
    "drakes", "dunefolk", "dwarves", "elves-wood", "goblins", "human-loyalists", "human-magi",
    "human-outlaws", "human-peasants", "merfolk", "monsters", "nagas", "orcs", "saurians", "trolls",
    "undead", "undead-necromancers", "undead-skeletal",
)  # fmt: skip
SIDE = 72
VAL_UNIT_FRACTION = 0.25
TRAIN_COUNT = 3340  # what the split below gives; checked on every read
SOURCE = (
    "Debian package wesnoth-1.16-data 1:1.16.9-1 (usr/share/games/wesnoth/1.16/data/core/images/units/), "
    "fetched once"
)

Sprites = tuple[np.ndarray, np.ndarray, list[str]]  # uint8 [N, 72, 72, 3], int64 labels, unit keys


def read_wesnoth_units(path: str | Path) -> Sprites:
    """The 72×72 sprites of :data:`CLASSES` in a ``wesnoth-1.16-data`` package, in archive order, with their
    faction labels and unit keys ("faction/unit")."""
    try:
        with open(path, "rb") as handle:
            _seek_data_member(handle, path)
            with tarfile.open(fileobj=handle, mode="r|*") as archive:
                return _read_sprites(archive)
    except (
        tarfile.TarError,
        lzma.LZMAError,
        EOFError,
        zlib.error,
        OSError,
        ValueError,
    ) as exc:  # ValueError: a broken ar header
        raise RmtdeployError(f"cannot read {path} as a Debian package: {exc}") from exc


def _seek_data_member(handle, path) -> None:
    """Leave ``handle`` at the start of the ``ar`` archive's ``data.tar.*`` member."""
    if handle.read(8) != b"!<arch>\n":
        raise RmtdeployError(f"{path} is not a Debian package (no ar archive header)")
    while header := handle.read(60):
        if len(header) < 60:
            break
        name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
        if name.startswith("data.tar"):
            return
        handle.seek(size + size % 2, 1)
    raise RmtdeployError(f"{path} holds no data.tar member: not a Debian package's layout")


def _read_sprites(archive: tarfile.TarFile) -> Sprites:
    from PIL import Image, UnidentifiedImageError

    images, labels, units = [], [], []
    index = {name: i for i, name in enumerate(CLASSES)}
    for member in archive:
        name = member.name.removeprefix("./")
        if not (member.isfile() and name.startswith(UNITS_FOLDER) and name.endswith(".png")):
            continue
        parts = name[len(UNITS_FOLDER) :].split("/")
        if parts[0] not in index or len(parts) not in (2, 3):
            continue
        try:
            with Image.open(io.BytesIO(archive.extractfile(member).read())) as sprite:
                if sprite.size != (SIDE, SIDE):
                    continue
                white = Image.new("RGBA", sprite.size, "white")
                images.append(np.asarray(Image.alpha_composite(white, sprite.convert("RGBA")).convert("RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise RmtdeployError(f"{name} in the package is not a readable PNG: {exc}") from exc
        labels.append(index[parts[0]])
        units.append(f"{parts[0]}/{unit_of(parts[1:])}")
    if not images:
        raise RmtdeployError(f"the package holds no 72×72 sprites under {UNITS_FOLDER}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), units


def unit_of(path: list[str]) -> str:
    """A sprite's unit type: its folder when it has one (``jinn/jinn-attack.png``), else the file name
    before its first ``-``/``+`` (``archer+female-bow-attack1.png`` → ``archer``) without trailing
    digits."""
    if len(path) == 2:
        return path[0]
    return re.split(r"[-+.]", path[0])[0].rstrip("0123456789")


def split_by_unit(labels: np.ndarray, units: list[str], fraction: float, seed: int) -> np.ndarray:
    """Whether each sprite is held out: ``fraction`` of each class's unit types (at least one), drawn with
    ``seed``; every frame of a unit type lies on one side."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(units)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        types = sorted(set(keys[labels == label]))
        count = max(1, round(len(types) * fraction))
        chosen = set(rng.choice(types, count, replace=False).tolist())
        held |= (labels == label) & np.isin(keys, list(chosen))
    return held


@register_dataset(
    "wesnoth-units",
    description="4,378 unit sprites of Battle for Wesnoth drawn by its artists, 72×72 RGB, 18 factions; "
    "split by unit type (a model must tell the faction of units it has not seen)",
    source=SOURCE,
    num_classes=len(CLASSES),
    native_size=(SIDE, SIDE),
    native_channels=3,
    class_names=CLASSES,
    download=WESNOTH_DEB,
    train_count=TRAIN_COUNT,
    split_note=f"by unit type: {VAL_UNIT_FRACTION:g} of each faction's unit types held out as val, every "
    f"frame of a type on one side (seed {SPLIT_SEED})",
    mirror=True,
)
def _read_wesnoth_units():
    path = verified(WESNOTH_DEB, "wesnoth-units")
    images, labels, units = read_wesnoth_units(path)
    held = split_by_unit(labels, units, VAL_UNIT_FRACTION, SPLIT_SEED)
    order = np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])
    if int((~held).sum()) != TRAIN_COUNT:
        raise RmtdeployError(
            f"{path} gives {int((~held).sum())} training sprites, not the {TRAIN_COUNT} this reader was written for"
        )
    return images[order], labels[order]
