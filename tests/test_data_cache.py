"""The on-disk dataset cache: built once, reused, invalidated by a changed source, never half-used."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masktune_core.data import DataOptions, build_dataset, cache
from masktune_core.data.cache import DiskImages, cache_root, load_dataset


def write_folder(root: Path, per_class: int = 12) -> None:
    """Two class folders of small noisy images (distinct pixels, so a misplaced row shows)."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MASKTUNE_CACHE_DIR", str(root))
    return root


def test_cache_equals_the_in_memory_dataset_and_is_reused(tmp_path: Path, cache_dir: Path) -> None:
    write_folder(tmp_path / "data")
    options = DataOptions(data_dir=str(tmp_path / "data"), image_size=8)
    lines: list[str] = []
    cached = load_dataset("imagefolder", options, echo=lines.append)
    memory = build_dataset("imagefolder", options)
    assert any("decoding train" in line for line in lines)  # progress while building
    for name, split in memory.splits.items():
        mapped = cached.splits[name]
        assert isinstance(mapped.images, DiskImages) and mapped.images.shape == split.images.shape
        assert torch.equal(mapped.images[torch.arange(len(split))], split.images)
        assert torch.equal(mapped.labels, split.labels)
    assert (cached.mean, cached.std, cached.class_names) == (memory.mean, memory.std, memory.class_names)
    folders = list(cache_dir.glob("imagefolder-*"))
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    assert not list(cache_dir.glob(".*.tmp"))

    again: list[str] = []
    load_dataset("imagefolder", options, echo=again.append)
    assert again == []  # nothing decoded the second time
    assert list(cache_dir.glob("imagefolder-*")) == folders


def test_changed_source_or_option_gets_a_new_cache(tmp_path: Path, cache_dir: Path) -> None:
    write_folder(tmp_path / "data")
    options = DataOptions(data_dir=str(tmp_path / "data"), image_size=8)
    first = load_dataset("imagefolder", options)
    image = tmp_path / "data" / "cat" / "00.png"
    Image.new("RGB", (10, 12), (255, 255, 255)).save(image)
    os.utime(image, ns=(1, 1))  # a new size and time, as a replaced file has
    changed = load_dataset("imagefolder", options)
    assert (_white_images(first), _white_images(changed)) == (0, 1)  # the new pixels, not the old cache
    assert len(list(cache_dir.glob("imagefolder-*"))) == 2
    load_dataset("imagefolder", DataOptions(data_dir=str(tmp_path / "data"), image_size=10))
    assert len(list(cache_dir.glob("imagefolder-*"))) == 3
    assert first.splits["train"].images.path != changed.splits["train"].images.path


def _white_images(bundle: cache.DatasetBundle) -> int:
    return sum(
        int((split.images[torch.arange(len(split))] == 255).flatten(1).all(1).sum())
        for split in bundle.splits.values()
    )


def test_a_failed_build_leaves_nothing_to_reuse(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_folder(tmp_path / "data")
    options = DataOptions(data_dir=str(tmp_path / "data"), image_size=8)

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache, "_write", crash)
    with pytest.raises(OSError):
        load_dataset("imagefolder", options)
    assert [p for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    monkeypatch.setenv("MASKTUNE_CACHE_DIR", str(cache_dir))
    # A folder without meta.json (an older crash mid-rename cannot make one, a hand copy might) is rebuilt.
    key = cache.cache_key("imagefolder", options)
    (cache_dir / f"imagefolder-{key}").mkdir()
    bundle = load_dataset("imagefolder", options)
    assert len(bundle.splits["train"]) > 0


def test_skipped_images_are_cut_from_the_file(tmp_path: Path, cache_dir: Path) -> None:
    write_folder(tmp_path / "data", per_class=20)
    (tmp_path / "data" / "cat" / "zz.png").write_bytes(b"not an image")
    options = DataOptions(data_dir=str(tmp_path / "data"), image_size=8)
    cached = load_dataset("imagefolder", options)
    memory = build_dataset("imagefolder", options)
    assert cached.skipped == memory.skipped and len(cached.skipped) == 1
    for name, split in memory.splits.items():
        images = cached.splits[name].images
        assert images.path.stat().st_size == split.images.numel()
        assert torch.equal(images[torch.arange(len(split))], split.images)


def test_disk_images_index_like_a_tensor(tmp_path: Path) -> None:
    data = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    path = tmp_path / "x.u8"
    path.write_bytes(data.numpy().tobytes())
    images = DiskImages(path, (50, 3, 4, 5))
    index = torch.cat([torch.randperm(50)[:17], torch.tensor([3, 3, 4, 5, -1])])  # repeats, runs, negative
    assert torch.equal(images[index], data[index])
    assert torch.equal(images[3:9], data[3:9]) and torch.equal(images[::7], data[::7])
    assert torch.equal(images[7], data[7]) and images[torch.tensor([], dtype=torch.long)].shape == (
        0,
        3,
        4,
        5,
    )
    assert len(images) == 50 and images.shape == data.shape
    with pytest.raises(IndexError):
        images[torch.tensor([50])]


def test_reading_batches_keeps_resident_memory_flat(tmp_path: Path) -> None:
    # 64 MB read in scattered batches: none of it may stay resident (a memory map kept most of it).
    rows, row_bytes = 4096, 16384
    path = tmp_path / "big.u8"
    with open(path, "wb") as handle:  # real bytes: pages of a sparse file could map to one zero page
        for _ in range(rows // 256):
            handle.write(os.urandom(256 * row_bytes))
    images = DiskImages(path, (rows, 1, 128, 128))
    before = _resident_mb()
    for _ in range(32):
        images[torch.randperm(rows)[:128]]
    assert _resident_mb() - before < 16


def _resident_mb() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return (int(fields["RssFile"].split()[0]) + int(fields["RssAnon"].split()[0])) / 1024


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MASKTUNE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "masktune"
    monkeypatch.setenv("MASKTUNE_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
