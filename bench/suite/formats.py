"""Writers for the product's three folder layouts (``masktune_core/data/folders.py`` reads them back).

Every layout encodes the same thing: a binary label and a binary cue per image, and the split. Groups come
out as ``2 * label + cue`` in all three, as the Waterbirds and CelebA loaders define them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")  # split codes 0, 1, 2 in metadata.csv and list_eval_partition.csv


@dataclass(frozen=True)
class SplitData:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N], 0 or 1
    cues: np.ndarray  # int64 [N], 0 or 1


Writer = Callable[[Path, dict[str, SplitData], tuple[str, str]], None]


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path, format="PNG")


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _rows(splits: dict[str, SplitData]) -> list[tuple[int, str, int, np.ndarray, int, int]]:
    """(running number, split, split code, image, label, cue) over all splits, train first."""
    out, number = [], 0
    for code, split in enumerate(SPLITS):
        data = splits[split]
        for image, label, cue in zip(data.images, data.labels, data.cues, strict=True):
            number += 1
            out.append((number, split, code, image, int(label), int(cue)))
    return out


def write_waterbirds(root: Path, splits: dict[str, SplitData], classes: tuple[str, str]) -> None:
    """``metadata.csv`` (img_id, img_filename, y, split, place) with images under one folder per class;
    ``place`` is the cue (0 = "land", 1 = "water" to the loader)."""
    table = []
    for number, _, code, image, label, cue in _rows(splits):
        filename = f"{label:03d}.{_slug(classes[label])}/{number:05d}.png"
        _save(root / filename, image)
        table.append([number, filename, label, code, cue])
    _write_csv(root / "metadata.csv", ["img_id", "img_filename", "y", "split", "place"], table)


def write_celeba(root: Path, splits: dict[str, SplitData], classes: tuple[str, str]) -> None:
    """Kaggle's CSV layout: ``list_attr_celeba.csv`` and ``list_eval_partition.csv``, images in
    ``img_align_celeba/``. The loader's target column ``Blond_Hair`` holds the label (1 = ``classes[1]``)
    and its spurious column ``Male`` holds the cue, both as -1/1."""
    attributes, partition = [], []
    for number, _, code, image, label, cue in _rows(splits):
        image_id = f"{number:06d}.png"
        _save(root / "img_align_celeba" / image_id, image)
        attributes.append([image_id, 2 * label - 1, 2 * cue - 1])
        partition.append([image_id, code])
    _write_csv(root / "list_attr_celeba.csv", ["image_id", "Blond_Hair", "Male"], attributes)
    _write_csv(root / "list_eval_partition.csv", ["image_id", "partition"], partition)


def write_imagefolder(root: Path, splits: dict[str, SplitData], classes: tuple[str, str]) -> None:
    """``train/``, ``val/``, ``test/`` with one folder per class, and ``groups.csv`` (path, group).

    Class folders are prefixed 0- and 1- because the loader numbers classes in sorted folder order."""
    table = []
    for number, split, _, image, label, cue in _rows(splits):
        path = f"{split}/{label}-{_slug(classes[label])}/{number:05d}.png"
        _save(root / path, image)
        table.append([path, 2 * label + cue])
    _write_csv(root / "groups.csv", ["path", "group"], table)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# layout name -> (writer, the --dataset name the product reads it with)
LAYOUTS: dict[str, tuple[Writer, str]] = {
    "waterbirds": (write_waterbirds, "waterbirds"),
    "celeba": (write_celeba, "celeba"),
    "imagefolder": (write_imagefolder, "imagefolder"),
}
