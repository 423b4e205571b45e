"""MNIST, Fashion-MNIST, CIFAR-10 and SVHN through torchvision's own dataset classes.

One builder, parametrised by the ``SOURCES`` table. The arrays torchvision loads (``.data``) become uint8
tensors directly, never through PIL image by image. Test = the official test set; val is carved from train.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from masktune_core.data import register
from masktune_core.data.base import DEFAULT_VAL_FRACTION, DataOptions, DatasetBundle, Split
from masktune_core.data.imageio import carve_val, channel_stats, data_root, image_size, resize_images
from masktune_core.errors import DataError
from masktune_core.recipes import Recipe

# Debian's dataset-fashion-mnist package (the gzipped IDX files torchvision would download).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_SMALL_CNN = Recipe(backbone="small-cnn", batch_size=128, lr=0.01, finetune_lr=0.005, optimizer="sgd")
_VGG = Recipe(backbone="vgg", batch_size=128, lr=0.01, finetune_lr=0.001, optimizer="sgd")


@dataclass(frozen=True)
class Source:
    """How one torchvision dataset class is found on disk and turned into tensors."""

    torchvision_class: str
    description: str
    files: tuple[str, ...]  # every file the class reads, relative to the root
    layout: str  # axis order of ``.data``: "NHW", "NHWC" or "NCHW"
    labels_attribute: str
    split_style: str  # "train": ``train=True/False``; "split": ``split="train"/"test"``
    augment: str
    native_size: int
    recipe: Recipe = field(default_factory=Recipe)
    debian_fallback: bool = False  # may read the gz files in FASHION_MNIST_SYSTEM_DIR

    @property
    def folder(self) -> str:
        return str(Path(self.files[0]).parent)


SOURCES: dict[str, Source] = {
    "mnist": Source(
        "MNIST",
        "MNIST handwritten digits (torchvision; --download or --data-dir)",
        tuple(f"MNIST/raw/{name}" for name in _IDX_FILES),
        "NHW",
        "targets",
        "train",
        "crop",
        28,
        Recipe(epochs=3, image_size=28).over(_SMALL_CNN),
    ),
    "fashion-mnist": Source(
        "FashionMNIST",
        "Fashion-MNIST clothing (Debian's package files, torchvision's --download, or --data-dir)",
        tuple(f"FashionMNIST/raw/{name}" for name in _IDX_FILES),
        "NHW",
        "targets",
        "train",
        "crop",
        28,
        Recipe(epochs=5, image_size=28).over(_SMALL_CNN),
        debian_fallback=True,
    ),
    "cifar10": Source(
        "CIFAR10",
        "CIFAR-10 natural images (torchvision; --download or --data-dir)",
        (
            "cifar-10-batches-py/data_batch_1",
            "cifar-10-batches-py/data_batch_2",
            "cifar-10-batches-py/data_batch_3",
            "cifar-10-batches-py/data_batch_4",
            "cifar-10-batches-py/data_batch_5",
            "cifar-10-batches-py/test_batch",
            "cifar-10-batches-py/batches.meta",
        ),
        "NHWC",
        "targets",
        "train",
        "crop-flip",
        32,
        Recipe(epochs=30, image_size=32).over(_VGG),
    ),
    "svhn": Source(
        "SVHN",
        "SVHN house numbers (torchvision; --download or --data-dir)",
        ("train_32x32.mat", "test_32x32.mat"),
        "NCHW",
        "labels",
        "split",
        "crop",
        32,
        Recipe(epochs=15, image_size=32).over(_VGG),
    ),
}


def _missing(source: Source, root: Path) -> list[str]:
    return [name for name in source.files if not (root / name).is_file()]


def _debian_files_present(source: Source) -> bool:
    return source.debian_fallback and all(
        (FASHION_MNIST_SYSTEM_DIR / f"{name}.gz").is_file() for name in _IDX_FILES
    )


def _availability(source: Source) -> Callable[[DataOptions], tuple[bool, str]]:
    def availability(options: DataOptions) -> tuple[bool, str]:
        root = data_root(options)
        if not _missing(source, root):
            return True, f"found the files in {root / source.folder}"
        if _debian_files_present(source):
            return True, f"found Debian's Fashion-MNIST files in {FASHION_MNIST_SYSTEM_DIR}"
        if options.download:
            return True, f"will download into {root}"
        return False, f"no files in {root / source.folder}: pass --download, or --data-dir DIR holding them"

    return availability


def _to_nchw(data: object, layout: str) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
    if layout == "NHW":
        return images.unsqueeze(1)
    if layout == "NHWC":
        return images.permute(0, 3, 1, 2).contiguous()
    return images


def _load_split(source: Source, root: Path, train: bool, download: bool) -> tuple[Split, list[str] | None]:
    # torchvision pulls in ~2 s of imports; only pay for them when one of these sets is built.
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, source.torchvision_class)
    split_kwargs = (
        {"train": train} if source.split_style == "train" else {"split": "train" if train else "test"}
    )
    try:
        dataset = dataset_class(str(root), download=download, **split_kwargs)
    except RuntimeError as err:  # torchvision's "not found or corrupted" (a checksum mismatch)
        raise DataError(str(root / source.folder), f"{err}; delete the files and pass --download") from err
    except OSError as err:  # a failed download, an unreadable file
        raise DataError(str(root / source.folder), f"cannot load: {err}") from err
    labels = torch.as_tensor(np.asarray(getattr(dataset, source.labels_attribute)), dtype=torch.int64)
    return Split(_to_nchw(dataset.data, source.layout), labels), getattr(dataset, "classes", None)


def _load(source: Source, root: Path, download: bool) -> tuple[Split, Split, list[str] | None]:
    train, classes = _load_split(source, root, True, download)
    test, _ = _load_split(source, root, False, False)
    return train, test, classes


def _load_debian(source: Source) -> tuple[Split, Split, list[str] | None]:
    """Load Debian's gzipped IDX files through torchvision's own reader, from a scratch root.

    torchvision reads only un-gzipped files under ``<root>/FashionMNIST/raw``; a temporary root keeps
    the user's data directory untouched (it may be read-only) and costs well under a second.
    """
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-") as scratch:
        raw = Path(scratch) / source.folder
        raw.mkdir(parents=True)
        for name in _IDX_FILES:
            with (
                gzip.open(FASHION_MNIST_SYSTEM_DIR / f"{name}.gz", "rb") as src,
                open(raw / name, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, length=1 << 20)
        return _load(source, Path(scratch), False)


def build_torchvision_set(name: str, options: DataOptions) -> DatasetBundle:
    """Build ``SOURCES[name]``: official train set minus a seeded, stratified val; official test set.

    Images keep their native size unless ``options.image_size`` is given.
    """
    source = SOURCES[name]
    size = image_size(options, source.native_size)
    root = data_root(options)
    missing = _missing(source, root)
    if missing and _debian_files_present(source):
        train, test, classes = _load_debian(source)
    elif missing and not options.download:
        raise DataError(
            str(root / source.folder),
            f"{name} files not found (first missing: {Path(missing[0]).name}); "
            "pass --download or --data-dir DIR holding them",
        )
    else:
        train, test, classes = _load(source, root, options.download)
    train, val = carve_val(train, options.val_fraction or DEFAULT_VAL_FRACTION, options.seed)
    splits = {
        split_name: Split(resize_images(split.images, size), split.labels)
        for split_name, split in (("train", train), ("val", val), ("test", test))
    }
    mean, std = channel_stats(splits["train"].images)
    return DatasetBundle(
        name=name,
        splits=splits,
        class_names=list(classes) if classes else [str(digit) for digit in range(10)],
        mean=mean,
        std=std,
        test_splits=["test"],
        main_test_split="test",
        augment=source.augment,
    )


def _builder(name: str) -> Callable[[DataOptions], DatasetBundle]:
    def build(options: DataOptions) -> DatasetBundle:
        return build_torchvision_set(name, options)

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


for _name, _source in SOURCES.items():
    register(_name, _source.description, recipe=_source.recipe, availability=_availability(_source))(
        _builder(_name)
    )
