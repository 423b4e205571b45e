"""Waterbirds, CelebA (both layouts) and image folders, on tiny image files written here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from masktune_core.data import DataOptions, build_dataset, dataset_availability
from masktune_core.errors import ConfigError, DataError

FACE_SIZE = (178, 218)  # CelebA's aligned crops
BLOND, DARK = (240, 220, 90), (60, 40, 20)
GROUP_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def save_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_waterbirds(root: Path, per_group: int = 2) -> None:
    """``per_group`` images of each (y, place) in each split; every image is one flat colour of its group."""
    lines = ["img_id,img_filename,y,split,place"]
    index = 0
    for split in (0, 1, 2):
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(per_group):
                    filename = f"{index:03d}.species/img_{index}.png"
                    save_image(root / filename, GROUP_COLORS[2 * y + place])
                    lines.append(f"{index},{filename},{y},{split},{place}")
                    index += 1
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_waterbirds(tmp_path: Path):
    write_waterbirds(tmp_path)
    options = DataOptions(data_dir=str(tmp_path), image_size=8)
    available, reason = dataset_availability("waterbirds", options)
    assert available and "metadata.csv" in reason
    bundle = build_dataset("waterbirds", options)
    assert bundle.group_names == [
        "landbird / land",
        "landbird / water",
        "waterbird / land",
        "waterbird / water",
    ]
    assert bundle.class_names == ["landbird", "waterbird"] and bundle.main_test_split == "test"
    for split in bundle.splits.values():
        assert split.images.shape == (8, 3, 8, 8) and split.images.dtype == torch.uint8
        assert split.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert torch.equal(split.labels, split.groups // 2)
        # The whole image is resized, so each keeps its flat group colour.
        colors = torch.tensor([GROUP_COLORS[g] for g in split.groups.tolist()], dtype=torch.uint8)
        assert torch.equal(split.images[:, :, 4, 4], colors)
        assert split.skipped == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing-column", "missing column 'place'"),
        ("split-7", "column 'split', row 2: '7' is not one of 0 (train), 1 (val), 2 (test)"),
        ("empty-val", "split 1 (val) has no images"),
    ],
)
def test_waterbirds_bad_metadata(tmp_path: Path, change: str, message: str):
    write_waterbirds(tmp_path, per_group=1)
    metadata = tmp_path / "metadata.csv"
    lines = metadata.read_text().splitlines()
    if change == "missing-column":
        lines = [",".join(line.split(",")[:4]) for line in lines]
    elif change == "split-7":
        fields = lines[1].split(",")
        fields[3] = "7"
        lines[1] = ",".join(fields)
    else:
        lines = [line for line in lines if line.split(",")[3] != "1"]
    metadata.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        build_dataset("waterbirds", DataOptions(data_dir=str(tmp_path), image_size=8))
    assert err.value.path == str(metadata)
    assert message in str(err.value)


def test_bad_images_skip_or_fail(tmp_path: Path):
    write_waterbirds(tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, "JPEG")
    truncated = tmp_path / "bad" / "truncated.jpg"
    truncated.parent.mkdir()
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    empty = tmp_path / "bad" / "empty.png"
    empty.write_bytes(b"")
    metadata = tmp_path / "metadata.csv"
    with metadata.open("a") as file:
        file.write("100,bad/truncated.jpg,0,0,0\n101,bad/empty.png,1,2,1\n")

    bundle = build_dataset("waterbirds", DataOptions(data_dir=str(tmp_path), image_size=8))
    assert bundle.splits["train"].skipped == [str(truncated)]
    assert bundle.splits["test"].skipped == [str(empty)]
    assert sorted(bundle.skipped) == sorted([str(truncated), str(empty)])
    assert len(bundle.splits["train"]) == 8 and len(bundle.splits["test"]) == 8
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    with pytest.raises(DataError) as err:
        build_dataset("waterbirds", DataOptions(data_dir=str(tmp_path), image_size=8, bad_images="fail"))
    assert err.value.path in (str(truncated), str(empty))
    with pytest.raises(ConfigError) as err:
        build_dataset("waterbirds", DataOptions(data_dir=str(tmp_path), bad_images="ignore"))
    assert err.value.field == "bad_images"


# (image, blond, male, partition)
CELEBA_ROWS = [
    ("000001.jpg", 1, -1, 0),
    ("000002.jpg", -1, 1, 0),
    ("000003.jpg", 1, 1, 0),
    ("000004.jpg", -1, -1, 1),
    ("000005.jpg", 1, 1, 1),
    ("000006.jpg", -1, 1, 2),
    ("000007.jpg", 1, -1, 2),
]
ATTRIBUTES = ["5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Male", "Young"]


def _attribute_values(blond: int, male: int) -> list[str]:
    values = {"5_o_Clock_Shadow": -1, "Black_Hair": -blond, "Blond_Hair": blond, "Male": male, "Young": 1}
    return [str(values[name]) for name in ATTRIBUTES]


def write_celeba_kaggle(root: Path) -> None:
    images = root / "img_align_celeba" / "img_align_celeba"
    attributes = ["image_id," + ",".join(ATTRIBUTES)]
    partition = ["image_id,partition"]
    for image, blond, male, split in CELEBA_ROWS:
        save_image(images / image, BLOND if blond > 0 else DARK, FACE_SIZE)
        attributes.append(",".join([image, *_attribute_values(blond, male)]))
        partition.append(f"{image},{split}")
    (root / "list_attr_celeba.csv").write_text("\n".join(attributes) + "\n")
    (root / "list_eval_partition.csv").write_text("\n".join(partition) + "\n")


def write_celeba_torchvision(root: Path) -> None:
    base = root / "celeba"
    attributes = [str(len(CELEBA_ROWS)), " ".join(ATTRIBUTES)]
    partition = []
    for image, blond, male, split in CELEBA_ROWS:
        save_image(base / "img_align_celeba" / image, BLOND if blond > 0 else DARK, FACE_SIZE)
        attributes.append(f"{image} " + " ".join(f"{v:>2}" for v in _attribute_values(blond, male)))
        partition.append(f"{image} {split}")
    (base / "list_attr_celeba.txt").write_text("\n".join(attributes) + "\n")
    (base / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")


@pytest.mark.parametrize("writer", [write_celeba_kaggle, write_celeba_torchvision])
def test_celeba_layouts(tmp_path: Path, writer):
    writer(tmp_path)
    options = DataOptions(data_dir=str(tmp_path), image_size=16)
    assert dataset_availability("celeba", options)[0]
    bundle = build_dataset("celeba", options)
    assert bundle.class_names == ["not blond", "blond"]
    assert bundle.group_names == ["not blond / female", "not blond / male", "blond / female", "blond / male"]
    expected = {"train": [], "val": [], "test": []}
    for _, blond, male, split in CELEBA_ROWS:
        expected[("train", "val", "test")[split]].append(2 * (blond > 0) + (male > 0))
    for name, groups in expected.items():
        split = bundle.splits[name]
        assert split.groups.tolist() == groups, name
        assert torch.equal(split.labels, split.groups // 2)
        assert split.images.shape[1:] == (3, 16, 16)
    blond = bundle.splits["train"].labels == 1
    assert bool((bundle.splits["train"].images[blond, 0] > 200).all())


def test_celeba_missing_lists(tmp_path: Path):
    available, reason = dataset_availability("celeba", DataOptions(data_dir=str(tmp_path)))
    assert not available and "list_attr_celeba.csv" in reason
    with pytest.raises(DataError):
        build_dataset("celeba", DataOptions(data_dir=str(tmp_path)))
    with pytest.raises(ConfigError) as err:
        build_dataset("celeba", DataOptions())
    assert err.value.field == "data_dir"


def _fill_classes(folder: Path, counts: dict[str, int]) -> list[Path]:
    paths = []
    for index, (cls, count) in enumerate(counts.items()):
        for i in range(count):
            path = folder / cls / f"{i}.png"
            save_image(path, GROUP_COLORS[index])
            paths.append(path)
    return paths


def test_imagefolder_without_split_folders(tmp_path: Path):
    _fill_classes(tmp_path, {"cat": 10, "dog": 10})
    options = DataOptions(data_dir=str(tmp_path), image_size=8, val_fraction=0.25)
    assert dataset_availability("imagefolder", options)[0]
    bundle = build_dataset("imagefolder", options)
    assert bundle.class_names == ["cat", "dog"] and bundle.group_names is None
    sizes = {name: len(split) for name, split in bundle.splits.items()}
    assert sizes == {"train": 12, "val": 4, "test": 4}  # test 20% of each class, val 25% of the rest
    for split in bundle.splits.values():
        assert split.groups is None
        assert torch.bincount(split.labels).tolist() == [len(split) // 2] * 2
    again = build_dataset("imagefolder", options)
    assert torch.equal(again.splits["val"].images, bundle.splits["val"].images)


def test_imagefolder_with_splits_and_groups(tmp_path: Path):
    paths = _fill_classes(tmp_path / "train", {"a": 3, "b": 3})
    paths += _fill_classes(tmp_path / "val", {"a": 1, "b": 1})
    paths += _fill_classes(tmp_path / "test", {"a": 2, "b": 2})
    rows = ["path,group"] + [f"{p.relative_to(tmp_path).as_posix()},{i % 3}" for i, p in enumerate(paths)]
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    bundle = build_dataset("imagefolder", DataOptions(data_dir=str(tmp_path), image_size=8))
    assert {name: len(split) for name, split in bundle.splits.items()} == {"train": 6, "val": 2, "test": 4}
    assert bundle.group_names == ["group 0", "group 1", "group 2"]
    assert bundle.splits["train"].groups.tolist() == [0, 1, 2, 0, 1, 2]
    assert bundle.splits["test"].groups.tolist() == [i % 3 for i in range(8, 12)]

    (tmp_path / "groups.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match=r"no row for image 'test/b/1\.png'"):
        build_dataset("imagefolder", DataOptions(data_dir=str(tmp_path), image_size=8))


def test_imagefolder_rejects_unknown_class(tmp_path: Path):
    _fill_classes(tmp_path / "train", {"a": 4, "b": 4})
    _fill_classes(tmp_path / "test", {"c": 1})
    with pytest.raises(DataError) as err:
        build_dataset("imagefolder", DataOptions(data_dir=str(tmp_path), image_size=8))
    assert err.value.path == str(tmp_path / "test" / "c")
