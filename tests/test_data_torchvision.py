"""MNIST, Fashion-MNIST, CIFAR-10 and SVHN through torchvision's loaders, on tiny files in real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from masktune_core.data import DataOptions, build_dataset, dataset_availability
from masktune_core.data import torchvision_sets as tv_sets
from masktune_core.errors import DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: zero, zero, type 0x08 (uint8), rank, big-endian dimensions, then the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_idx_set(n_train: int = 40, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }


def write_idx(folder: Path, arrays: dict[str, np.ndarray], gzipped: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))


def sorted_rows(images: torch.Tensor) -> list[bytes]:
    return sorted(image.numpy().tobytes() for image in images)


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny files cannot match torchvision's md5 sums: keep its existence check, drop the checksum."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    def exists_only(fpath: str | os.PathLike, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists_only)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists_only)


def test_mnist_from_torchvision_raw_layout(tmp_path: Path):
    arrays = tiny_idx_set()
    write_idx(tmp_path / "MNIST" / "raw", arrays)
    options = DataOptions(data_dir=str(tmp_path), val_fraction=0.25)
    assert dataset_availability("mnist", options)[0]
    bundle = build_dataset("mnist", options)
    train, val, test = bundle.splits["train"], bundle.splits["val"], bundle.splits["test"]
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    # val is stratified: one image of each digit; train + val are exactly the training file.
    assert sorted(val.labels.tolist()) == list(range(10))
    assert sorted_rows(torch.cat([train.images, val.images])[:, 0]) == sorted_rows(
        torch.from_numpy(arrays["train-images-idx3-ubyte"])
    )
    assert bundle.augment == "crop" and bundle.class_names[0].startswith("0")
    assert bundle.mean[0] == pytest.approx(train.images.float().mean().item() / 255, abs=1e-6)

    resized = build_dataset("mnist", DataOptions(data_dir=str(tmp_path), image_size=32))
    assert resized.image_size == 32

    biased = build_dataset("biased-mnist", DataOptions(data_dir=str(tmp_path), val_fraction=0.25))
    assert biased.channels == 3 and biased.class_names == ["0-4", "5-9"]
    assert torch.equal(biased.splits["test_biased"].labels, (test.labels >= 5).long())


def test_missing_files_name_the_folder(tmp_path: Path):
    options = DataOptions(data_dir=str(tmp_path))
    for name, folder in (("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("svhn", "")):
        available, reason = dataset_availability(name, options)
        assert not available and "--download" in reason
        with pytest.raises(DataError) as err:
            build_dataset(name, options)
        assert err.value.path == str(tmp_path / folder)
        assert "pass --download or --data-dir" in str(err.value)


def test_data_root_defaults_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_idx(tmp_path / "MNIST" / "raw", tiny_idx_set())
    monkeypatch.setenv("MASKTUNE_DATA_DIR", str(tmp_path))
    assert len(build_dataset("mnist", DataOptions()).splits["test"]) == 10


def test_fashion_mnist_finds_debian_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = tiny_idx_set(20, 10, seed=1)
    debian = tmp_path / "debian"
    write_idx(debian, arrays, gzipped=True)
    monkeypatch.setattr(tv_sets, "FASHION_MNIST_SYSTEM_DIR", debian)
    root = tmp_path / "root"
    root.mkdir()
    options = DataOptions(data_dir=str(root))
    available, reason = dataset_availability("fashion-mnist", options)
    assert available and "Debian" in reason and str(debian) in reason
    bundle = build_dataset("fashion-mnist", options)
    assert torch.equal(bundle.splits["test"].images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert len(bundle.splits["train"]) + len(bundle.splits["val"]) == 20
    assert bundle.class_names[0] == "T-shirt/top"
    assert list(root.iterdir()) == []  # the user's data folder is left untouched

    # Files under the root win over the system copy.
    write_idx(root / "FashionMNIST" / "raw", tiny_idx_set(20, 5, seed=2))
    assert len(build_dataset("fashion-mnist", options).splits["test"]) == 5


def test_fashion_mnist_without_any_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tv_sets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    available, _ = dataset_availability("fashion-mnist", DataOptions(data_dir=str(tmp_path)))
    assert not available
    with pytest.raises(DataError, match="pass --download"):
        build_dataset("fashion-mnist", DataOptions(data_dir=str(tmp_path)))


def write_cifar(root: Path, per_batch: int = 4) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6 * per_batch, 3 * 32 * 32), dtype=np.uint8)
    labels = [i % 10 for i in range(6 * per_batch)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batch = {"data": images[part], "labels": labels[part], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch))
    label_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": label_names}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return images, labels


def test_cifar10_pickle_batches(tmp_path: Path, no_md5: None):
    images, labels = write_cifar(tmp_path)
    bundle = build_dataset("cifar10", DataOptions(data_dir=str(tmp_path), val_fraction=0.25))
    test = bundle.splits["test"]
    assert len(test) == 4 and len(bundle.splits["train"]) + len(bundle.splits["val"]) == 20
    # CIFAR rows are channel-major (1024 red, 1024 green, 1024 blue).
    assert torch.equal(test.images, torch.from_numpy(images[20:]).view(4, 3, 32, 32))
    assert test.labels.tolist() == labels[20:]
    assert bundle.class_names[0] == "airplane" and bundle.augment == "crop-flip"


def test_cifar10_checksum_mismatch_is_a_data_error(tmp_path: Path):
    write_cifar(tmp_path)
    with pytest.raises(DataError, match="corrupted"):
        build_dataset("cifar10", DataOptions(data_dir=str(tmp_path)))


def test_svhn_mat_files(tmp_path: Path, no_md5: None):
    import scipy.io

    rng = np.random.default_rng(0)
    pixels = {}
    for name, n in (("train", 20), ("test", 6)):
        pixels[name] = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # [H, W, C, N] as in the release
        labels = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN stores digit 0 as 10
        scipy.io.savemat(tmp_path / f"{name}_32x32.mat", {"X": pixels[name], "y": labels})
    bundle = build_dataset("svhn", DataOptions(data_dir=str(tmp_path), val_fraction=0.5))
    test = bundle.splits["test"]
    assert test.labels.tolist() == [1, 2, 3, 4, 5, 6]
    assert sorted(bundle.splits["val"].labels.tolist()) == list(range(10))  # 10 -> 0, stratified
    assert test.images.shape == (6, 3, 32, 32)
    assert torch.equal(test.images[2].permute(1, 2, 0), torch.from_numpy(pixels["test"][:, :, :, 2]))
    assert bundle.class_names == [str(d) for d in range(10)]


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_real_debian_fashion_mnist(tmp_path: Path):
    bundle = build_dataset("fashion-mnist", DataOptions(data_dir=str(tmp_path)))
    assert {name: len(split) for name, split in bundle.splits.items()} == {
        "train": 54000,
        "val": 6000,
        "test": 10000,
    }
    assert bundle.splits["train"].images.shape[1:] == (1, 28, 28)
    assert torch.bincount(bundle.splits["val"].labels).tolist() == [600] * 10
    assert bundle.mean[0] == pytest.approx(0.286, abs=0.002)  # Fashion-MNIST's well-known statistics
    assert bundle.std[0] == pytest.approx(0.353, abs=0.002)
