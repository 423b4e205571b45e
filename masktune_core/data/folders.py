"""Datasets stored as image files: Waterbirds, CelebA and any class-per-folder tree.

Each family only reads its lists into an ``ImageTable`` (paths, labels, groups, split codes); one path
decodes, validates and packs every table, so the three share error handling and the bad-image policy.
Images are resized whole (no crop) so a saliency mask lines up with what the model sees.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from masktune_core.data import register
from masktune_core.data.base import DEFAULT_VAL_FRACTION, DataOptions, DatasetBundle, Split
from masktune_core.data.imageio import (
    channel_stats,
    cross_group_names,
    decode_images,
    image_size,
    seeded_generator,
    stratified_split,
)
from masktune_core.errors import ConfigError, DataError
from masktune_core.recipes import FROM_SCRATCH, Recipe

DEFAULT_IMAGE_SIZE = 64
SPLIT_NAMES = ("train", "val", "test")  # split codes 0, 1, 2
IMAGEFOLDER_TEST_FRACTION = 0.2  # of the images, when the folder has no test/ split of its own
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_RESNET = Recipe(backbone="resnet18", optimizer="sgd", image_size=DEFAULT_IMAGE_SIZE)
# The published recipes below are for a pretrained network; from scratch, every folder dataset trains
# with Adam until validation stops improving (masktune_core.recipes.FROM_SCRATCH).
_BY_REGIME = {"scratch": FROM_SCRATCH}


@dataclass
class ImageTable:
    """The image files of one dataset before decoding; rows align across the arrays."""

    paths: list[Path]
    labels: np.ndarray  # int64
    splits: np.ndarray  # int64 split codes, 0/1/2 = train/val/test
    groups: np.ndarray | None  # int64, or None when the dataset has no groups
    source: Path  # the list file (or folder) that errors about rows and splits name


def bundle_from_table(
    name: str,
    table: ImageTable,
    class_names: list[str],
    group_names: list[str] | None,
    options: DataOptions,
) -> DatasetBundle:
    """Decode every split of ``table`` (thread pool, whole image resized) into a bundle."""
    size = image_size(options, DEFAULT_IMAGE_SIZE)
    members = [np.flatnonzero(table.splits == code) for code in range(len(SPLIT_NAMES))]
    for code, rows in enumerate(members):  # before decoding anything: a big split takes minutes
        if len(rows) == 0:
            raise DataError(str(table.source), f"split {code} ({SPLIT_NAMES[code]}) has no images")
    splits = {}
    for code, (split_name, rows) in enumerate(zip(SPLIT_NAMES, members, strict=True)):
        images, kept, skipped = decode_images(
            [table.paths[i] for i in rows], size, options.bad_images, split_name
        )
        if len(kept) == 0:
            raise DataError(
                str(table.source),
                f"none of the {len(rows)} images of split {code} ({split_name}) could be read",
            )
        rows = rows[kept.numpy()]
        groups = None if table.groups is None else torch.from_numpy(table.groups[rows])
        splits[split_name] = Split(images, torch.from_numpy(table.labels[rows]), groups, skipped)
    mean, std = channel_stats(splits["train"].images)
    return DatasetBundle(
        name=name,
        splits=splits,
        class_names=class_names,
        mean=mean,
        std=std,
        test_splits=["test"],
        main_test_split="test",
        group_names=group_names,
        augment="crop-flip",
    )


def _require_dir(options: DataOptions, name: str, needs: str) -> Path:
    if not options.data_dir:
        raise ConfigError("data_dir", f"{name} needs --data-dir DIR containing {needs}")
    root = Path(options.data_dir)
    if not root.is_dir():
        raise DataError(str(root), f"{name} data folder not found")
    return root


def _read_rows(path: Path, whitespace: bool = False) -> list[list[str]]:
    """All rows of a comma-separated file, or a whitespace-separated one."""
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would rename column 1.
        with open(path, newline="", encoding="utf-8-sig") as file:
            if whitespace:
                return [line.split() for line in file if line.strip()]
            return [row for row in csv.reader(file) if row]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(str(path), f"cannot read: {err}") from err


def _columns(path: Path, header: list[str], rows: list[list[str]], needed: list[str]) -> dict[str, list[str]]:
    """The ``needed`` columns by name; DataError naming the file and column when one is missing."""
    header = [column.strip() for column in header]
    missing = [column for column in needed if column not in header]
    if missing:
        raise DataError(str(path), f"missing column {missing[0]!r} (found: {', '.join(header)})")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(str(path), f"row {number} has {len(row)} fields, the header has {len(header)}")
    return {column: [row[header.index(column)].strip() for row in rows] for column in needed}


def _codes(path: Path, column: str, values: list[str], allowed: dict[int, str]) -> np.ndarray:
    """Integer codes of one column; DataError naming the file, column and row of the first bad value."""
    out = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        try:
            code = int(value)
        except ValueError:
            code = None
        if code not in allowed:
            choices = ", ".join(f"{key} ({meaning})" for key, meaning in allowed.items())
            raise DataError(
                str(path), f"column {column!r}, row {index + 2}: {value!r} is not one of {choices}"
            )
        out[index] = code
    return out


# --- Waterbirds -----------------------------------------------------------------------------------------

WATERBIRDS_CLASSES = ["landbird", "waterbird"]
WATERBIRDS_PLACES = ["land", "water"]
_SPLIT_CODES = dict(enumerate(SPLIT_NAMES))


def _waterbirds_availability(options: DataOptions) -> tuple[bool, str]:
    if not options.data_dir:
        return False, "needs --data-dir DIR containing metadata.csv (the Waterbirds release)"
    metadata = Path(options.data_dir) / "metadata.csv"
    if metadata.is_file():
        return True, f"found {metadata}"
    return False, f"no metadata.csv in {options.data_dir}: needs --data-dir DIR containing metadata.csv"


@register(
    "waterbirds",
    "Waterbirds: birds on land or water backgrounds; group = (bird type, place)",
    needs_data_dir=True,
    recipe=Recipe(epochs=30, batch_size=64, lr=0.001, finetune_lr=0.0001).over(_RESNET),
    recipes=_BY_REGIME,
    availability=_waterbirds_availability,
    groups=True,
    own_val=True,
)
def build_waterbirds(options: DataOptions) -> DatasetBundle:
    """``metadata.csv`` (img_filename, y, split, place): group = 2 * y + place."""
    root = _require_dir(options, "waterbirds", "metadata.csv")
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise DataError(str(metadata), "not found: the Waterbirds folder must contain metadata.csv")
    rows = _read_rows(metadata)
    if not rows:
        raise DataError(str(metadata), "file is empty")
    columns = _columns(metadata, rows[0], rows[1:], ["img_filename", "y", "split", "place"])
    labels = _codes(metadata, "y", columns["y"], dict(enumerate(WATERBIRDS_CLASSES)))
    places = _codes(metadata, "place", columns["place"], dict(enumerate(WATERBIRDS_PLACES)))
    table = ImageTable(
        paths=[root / filename for filename in columns["img_filename"]],
        labels=labels,
        splits=_codes(metadata, "split", columns["split"], _SPLIT_CODES),
        groups=2 * labels + places,
        source=metadata,
    )
    return bundle_from_table(
        "waterbirds",
        table,
        list(WATERBIRDS_CLASSES),
        cross_group_names(WATERBIRDS_CLASSES, WATERBIRDS_PLACES),
        options,
    )


# --- CelebA ---------------------------------------------------------------------------------------------

CELEBA_TARGET, CELEBA_SPURIOUS = "Blond_Hair", "Male"
CELEBA_CLASSES = ["not blond", "blond"]
CELEBA_SEXES = ["female", "male"]
_CELEBA_VALUES = {-1: "no", 1: "yes"}


@dataclass(frozen=True)
class _CelebaLayout:
    attributes: Path
    partition: Path
    images: Path
    csv: bool  # Kaggle's CSV files; else the original whitespace-separated txt files torchvision uses


def _celeba_layout(root: Path) -> _CelebaLayout | None:
    if (root / "list_attr_celeba.csv").is_file():
        nested = root / "img_align_celeba" / "img_align_celeba"
        images = nested if nested.is_dir() else root / "img_align_celeba"
        return _CelebaLayout(root / "list_attr_celeba.csv", root / "list_eval_partition.csv", images, True)
    base = root / "celeba"
    if (base / "list_attr_celeba.txt").is_file():
        return _CelebaLayout(
            base / "list_attr_celeba.txt", base / "list_eval_partition.txt", base / "img_align_celeba", False
        )
    return None


_CELEBA_NEEDS = (
    "list_attr_celeba.csv and list_eval_partition.csv (Kaggle layout) "
    "or celeba/list_attr_celeba.txt and celeba/list_eval_partition.txt (torchvision layout)"
)


def _celeba_availability(options: DataOptions) -> tuple[bool, str]:
    if not options.data_dir:
        return False, f"needs --data-dir DIR containing {_CELEBA_NEEDS}"
    layout = _celeba_layout(Path(options.data_dir))
    if layout is None:
        return False, f"no CelebA lists in {options.data_dir}: needs {_CELEBA_NEEDS}"
    return True, f"found {layout.attributes}"


def _celeba_table(layout: _CelebaLayout) -> ImageTable:
    if not layout.partition.is_file():
        raise DataError(str(layout.partition), "not found: CelebA needs its evaluation partition list")
    attribute_rows = _read_rows(layout.attributes, whitespace=not layout.csv)
    partition_rows = _read_rows(layout.partition, whitespace=not layout.csv)
    if layout.csv:
        if not attribute_rows or not partition_rows:
            raise DataError(
                str(layout.attributes if not attribute_rows else layout.partition), "file is empty"
            )
        header, attribute_rows = attribute_rows[0], attribute_rows[1:]
        partition = _columns(
            layout.partition, partition_rows[0], partition_rows[1:], ["image_id", "partition"]
        )
    else:
        # Original format: an image count, then the attribute names (no name for the file column), then rows.
        if len(attribute_rows) < 2:
            raise DataError(str(layout.attributes), "expected a count line and a header line")
        header, attribute_rows = ["image_id", *attribute_rows[1]], attribute_rows[2:]
        partition = _columns(
            layout.partition, ["image_id", "partition"], partition_rows, ["image_id", "partition"]
        )
    columns = _columns(
        layout.attributes, header, attribute_rows, ["image_id", CELEBA_TARGET, CELEBA_SPURIOUS]
    )
    partition_codes = _codes(layout.partition, "partition", partition["partition"], _SPLIT_CODES)
    split_of = dict(zip(partition["image_id"], partition_codes, strict=True))
    absent = [image for image in columns["image_id"] if image not in split_of]
    if absent:
        raise DataError(str(layout.partition), f"no partition for {absent[0]} ({len(absent)} images in all)")
    labels = _codes(layout.attributes, CELEBA_TARGET, columns[CELEBA_TARGET], _CELEBA_VALUES) > 0
    sexes = _codes(layout.attributes, CELEBA_SPURIOUS, columns[CELEBA_SPURIOUS], _CELEBA_VALUES) > 0
    return ImageTable(
        paths=[layout.images / image for image in columns["image_id"]],
        labels=labels.astype(np.int64),
        splits=np.array([split_of[image] for image in columns["image_id"]], dtype=np.int64),
        groups=(2 * labels + sexes).astype(np.int64),
        source=layout.partition,
    )


@register(
    "celeba",
    "CelebA faces: blond hair or not, spuriously tied to sex; group = (blond, male)",
    needs_data_dir=True,
    recipe=Recipe(epochs=5, batch_size=128, lr=0.001, finetune_lr=0.0001).over(_RESNET),
    recipes=_BY_REGIME,
    availability=_celeba_availability,
    groups=True,
    own_val=True,
)
def build_celeba(options: DataOptions) -> DatasetBundle:
    """Target Blond_Hair, spurious attribute Male, group = 2 * blond + male; Kaggle or torchvision layout."""
    root = _require_dir(options, "celeba", _CELEBA_NEEDS)
    layout = _celeba_layout(root)
    if layout is None:
        raise DataError(str(root), f"no CelebA lists found: needs {_CELEBA_NEEDS}")
    return bundle_from_table(
        "celeba",
        _celeba_table(layout),
        list(CELEBA_CLASSES),
        cross_group_names(CELEBA_CLASSES, CELEBA_SEXES),
        options,
    )


# --- Image folder ---------------------------------------------------------------------------------------

GROUPS_FILE = "groups.csv"


def _class_folders(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith(".")
    )


def _imagefolder_availability(options: DataOptions) -> tuple[bool, str]:
    if not options.data_dir:
        return False, "needs --data-dir DIR with one sub-folder of images per class (optionally under train/)"
    root = Path(options.data_dir)
    if not root.is_dir():
        return False, f"{root} is not a folder"
    if not _class_folders(root):
        return False, f"{root} has no class sub-folders"
    return True, f"found class folders in {root}"


def _carve(
    splits: np.ndarray, labels: np.ndarray, code: int, fraction: float, generator: torch.Generator
) -> None:
    """Move a stratified ``fraction`` of the training rows to split ``code``, in place."""
    pool = np.flatnonzero(splits == 0)
    _, taken = stratified_split(torch.from_numpy(labels[pool]), fraction, generator)
    splits[pool[taken.numpy()]] = code


def _read_groups(root: Path, paths: list[Path]) -> np.ndarray:
    """Group of every image from ``groups.csv`` (columns path, group; paths relative to the folder)."""
    groups_csv = root / GROUPS_FILE
    rows = _read_rows(groups_csv)
    if not rows:
        raise DataError(str(groups_csv), "file is empty")
    columns = _columns(groups_csv, rows[0], rows[1:], ["path", "group"])
    group_of = {}
    for number, (path, group) in enumerate(zip(columns["path"], columns["group"], strict=True), start=2):
        if not group.isdigit():
            raise DataError(
                str(groups_csv), f"column 'group', row {number}: {group!r} is not a whole number >= 0"
            )
        group_of[Path(path).as_posix()] = int(group)
    groups = np.empty(len(paths), dtype=np.int64)
    for index, path in enumerate(paths):
        relative = path.relative_to(root).as_posix()
        if relative not in group_of:
            raise DataError(str(groups_csv), f"no row for image {relative!r}")
        groups[index] = group_of[relative]
    return groups


@register(
    "imagefolder",
    "Your own images: one sub-folder per class (optionally train/ val/ test/), optional groups.csv",
    needs_data_dir=True,
    recipe=Recipe(epochs=20, batch_size=64, lr=0.01, finetune_lr=0.001).over(_RESNET),
    recipes=_BY_REGIME,
    availability=_imagefolder_availability,
    groups=lambda options: bool(options.data_dir) and (Path(options.data_dir) / GROUPS_FILE).is_file(),
    own_val=lambda options: bool(options.data_dir) and (Path(options.data_dir) / SPLIT_NAMES[1]).is_dir(),
)
def build_imagefolder(options: DataOptions) -> DatasetBundle:
    """Class sub-folders of ``data_dir``, or of its ``train/``, ``val/``, ``test/``.

    A missing val or test split is carved from train (stratified, seeded). ``groups.csv`` (path,group)
    gives groups when present.
    """
    root = _require_dir(options, "imagefolder", "one sub-folder of images per class")
    split_dirs = {code: root / name for code, name in enumerate(SPLIT_NAMES) if (root / name).is_dir()}
    if 0 not in split_dirs:
        split_dirs = {0: root}
    class_names = [folder.name for folder in _class_folders(split_dirs[0])]
    if not class_names:
        raise DataError(str(split_dirs[0]), "no class sub-folders found")
    paths, labels, codes = [], [], []
    for code, folder in split_dirs.items():
        for class_folder in _class_folders(folder):
            if class_folder.name not in class_names:
                raise DataError(str(class_folder), f"class folder not present in {split_dirs[0]}")
            found = _images_in(class_folder)
            paths += found
            labels += [class_names.index(class_folder.name)] * len(found)
            codes += [code] * len(found)
    if not paths:
        raise DataError(
            str(root), f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class sub-folders"
        )
    label_array, splits = np.array(labels, dtype=np.int64), np.array(codes, dtype=np.int64)
    generator = seeded_generator(options.seed, "imagefolder-split")
    if 2 not in split_dirs:
        _carve(splits, label_array, 2, IMAGEFOLDER_TEST_FRACTION, generator)
    if 1 not in split_dirs:
        _carve(
            splits,
            label_array,
            1,
            options.val_fraction or DEFAULT_VAL_FRACTION,
            generator,
        )
    groups = _read_groups(root, paths) if (root / GROUPS_FILE).is_file() else None
    group_names = None if groups is None else [f"group {group}" for group in range(int(groups.max()) + 1)]
    table = ImageTable(paths, label_array, splits, groups, root)
    return bundle_from_table("imagefolder", table, class_names, group_names, options)
