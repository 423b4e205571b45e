"""The on-disk dataset cache: each dataset is decoded once into raw uint8 arrays on disk.

The arrays are in ``np.memmap``'s layout and are decoded into through a memory map; ``load_dataset(name,
options)`` returns a bundle whose splits read them a batch at a time (see ``DiskImages``) from
``$MASKTUNE_CACHE_DIR`` (default ``~/.cache/masktune``), so no stage holds a whole split in memory and a
second run skips decoding. One cache folder per key::

    <name>-<key>/
      meta.json                  class and group names, normalisation, split sizes, skipped files, key
      <split>.images.u8          raw uint8 [N, C, H, W], C-contiguous, no header (the shape is in meta.json)
      <split>.labels.npy  <split>.groups.npy

The key hashes the dataset's options, the size and modification time of every source file (a changed
source gives a new key, so a stale cache is never read) and the dataset code. A cache is built in a
temporary folder and renamed into place, so a half-written one is never used; a lock file makes two
processes (the ranks of a distributed run) build it once.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masktune_core.data import build_dataset, get_dataset_info
from masktune_core.data.base import DataOptions, DatasetBundle, Split
from masktune_core.runs import file_lock, fsync, write_json

CACHE_ENV = "MASKTUNE_CACHE_DIR"
CACHE_VERSION = 1
WRITE_CHUNK = 4096  # images copied per step when an in-memory split is written out

Echo = Callable[[str], None]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "masktune")


class DiskImages:
    """uint8 images [N, C, H, W] in a raw file (the layout ``np.memmap`` maps), read a batch at a time.

    Indexing (an int, a slice or an index tensor) returns an in-memory torch tensor, as indexing a
    tensor with an index tensor does. Rows are read with ``pread`` in sorted order, one call per run of
    consecutive rows, into the returned buffer: through the page cache, but never mapped into this
    process. A memory map was measured to leave ~170 MB mapped after one batch of 128 scattered 64 px
    rows (the kernel maps whole cached folios around each fault), so a run's resident memory grew with
    the dataset; with reads it stays at one batch.
    """

    dtype = torch.uint8

    def __init__(self, path: Path, shape: tuple[int, int, int, int]) -> None:
        self.path = path
        self.shape = torch.Size(shape)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd: int | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the path and shape, and open the file themselves.
        return {**self.__dict__, "_fd": None}

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            return self[torch.tensor([int(index)])][0]
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} images")
        rows = rows % max(len(self), 1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        flat = out.reshape(len(rows), self.row_bytes)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # Runs of consecutive rows (a slice is one run) are read in one call each.
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if len(run) == 0:
                continue
            first = int(sorted_rows[run[0]])
            buffer = np.empty((len(run), self.row_bytes), dtype=np.uint8)
            _read_exactly(self._fd, buffer, first * self.row_bytes)
            flat[order[run]] = buffer
        return torch.from_numpy(out)


def _read_exactly(fd: int, buffer: np.ndarray, offset: int) -> None:
    view = memoryview(buffer).cast("B")
    while len(view):
        count = os.preadv(fd, [view], offset)
        if count == 0:
            raise OSError(f"cache file ended early at byte {offset}")
        view, offset = view[count:], offset + count


# ---------------------------------------------------------------------- building
_BUILD_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("masktune_cache_build", default=None)
_ECHO: contextvars.ContextVar[Echo | None] = contextvars.ContextVar("masktune_cache_echo", default=None)
_BUFFERS: list[np.memmap] = []  # the file-backed buffers of the cache being built


def image_buffer(name: str, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """A uint8 tensor of ``shape`` for a builder to decode into: file-backed while a cache is being
    built (so decoding a split larger than memory works), plain memory otherwise."""
    folder = _BUILD_DIR.get()
    if folder is None:
        return torch.empty(shape, dtype=torch.uint8)
    path = folder / f"{name}.images.u8"
    with open(path, "wb") as handle:
        handle.truncate(int(np.prod(shape)))
    array = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    _BUFFERS.append(array)
    return torch.from_numpy(array)


def release_buffers() -> None:
    """Write out and drop the pages of the buffers being built, so decoding a split larger than memory
    keeps resident memory flat (the kernel would reclaim them too, but only under pressure)."""
    for array in _BUFFERS:
        if isinstance(getattr(array, "_mmap", None), mmap.mmap):  # None for an empty split
            array.flush()
            array._mmap.madvise(mmap.MADV_DONTNEED)


def report(what: str, done: int, total: int) -> None:
    """Progress while a cache is built (one line per call; builders call it per chunk)."""
    release_buffers()
    echo = _ECHO.get()
    if echo is not None:
        echo(f"[cache] {what}: {done:,}/{total:,} images")


def cache_key(name: str, options: DataOptions) -> str:
    """Hash of the dataset's options, its source files (path, size, mtime) and the dataset code."""
    digest = hashlib.sha256()
    fields = dataclasses.asdict(options)
    digest.update(json.dumps({"v": CACHE_VERSION, "name": name, "options": fields}, sort_keys=True).encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    for root in _source_roots(name, options):
        for path, size, mtime in _walk(root):
            digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:20]


def _source_roots(name: str, options: DataOptions) -> list[Path]:
    from masktune_core.data.imageio import data_root
    from masktune_core.data.torchvision_sets import FASHION_MNIST_SYSTEM_DIR

    if get_dataset_info(name).availability is None:  # bundled: the code hash covers it
        return []
    roots = [data_root(options)]
    if "fashion" in name:
        roots.append(FASHION_MNIST_SYSTEM_DIR)
    return [root for root in roots if root.exists()]


def _walk(root: Path) -> Iterator[tuple[str, int, int]]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file in sorted(files):
            path = os.path.join(folder, file)
            with contextlib.suppress(OSError):
                stat = os.stat(path)
                yield path, stat.st_size, stat.st_mtime_ns


def load_dataset(name: str, options: DataOptions, echo: Echo | None = None) -> DatasetBundle:
    """The dataset read from its cache, building the cache first if there is none for these options."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{cache_key(name, options)}"
    if not (folder / "meta.json").is_file():
        with file_lock(root / f".{folder.name}.lock"):
            if not (folder / "meta.json").is_file():  # another process may have built it meanwhile
                _build(name, options, folder, echo)
    return open_cache(folder)


def _build(name: str, options: DataOptions, folder: Path, echo: Echo | None) -> None:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if echo is not None:
        echo(f"[cache] decoding {name} once into {folder}")
    tokens = (_BUILD_DIR.set(tmp), _ECHO.set(echo))
    try:
        bundle = build_dataset(name, options)
        _write(bundle, tmp, folder.name.rpartition("-")[2])
        shutil.rmtree(folder, ignore_errors=True)  # a meta-less leftover
        os.replace(tmp, folder)
        fsync(folder.parent)
    finally:
        _BUFFERS.clear()
        _BUILD_DIR.reset(tokens[0])
        _ECHO.reset(tokens[1])
        shutil.rmtree(tmp, ignore_errors=True)


def _write(bundle: DatasetBundle, tmp: Path, key: str) -> None:
    sizes = {}
    for split_name, split in bundle.splits.items():
        path = tmp / f"{split_name}.images.u8"
        images = split.images
        if _backed_by(images, path):
            # Decoded straight into this file: cut it to the images kept (unreadable ones are skipped).
            os.truncate(path, images.numel())
        else:
            # Beside the file, not over it: a buffer the builder did not keep may still map the file.
            with open(path.with_suffix(".writing"), "wb") as handle:
                for start in range(0, len(images), WRITE_CHUNK):
                    handle.write(images[start : start + WRITE_CHUNK].contiguous().numpy().tobytes())
                    report(f"writing {split_name}", min(start + WRITE_CHUNK, len(images)), len(images))
            os.replace(path.with_suffix(".writing"), path)
        fsync(path)
        np.save(tmp / f"{split_name}.labels.npy", split.labels.numpy())
        if split.groups is not None:
            np.save(tmp / f"{split_name}.groups.npy", split.groups.numpy())
        sizes[split_name] = {"shape": list(images.shape), "skipped": split.skipped}
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "name": bundle.name,
        "class_names": bundle.class_names,
        "group_names": bundle.group_names,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "test_splits": bundle.test_splits,
        "main_test_split": bundle.main_test_split,
        "augment": bundle.augment,
        "splits": sizes,
    }
    write_json(tmp / "meta.json", meta)


def _backed_by(images: torch.Tensor, path: Path) -> bool:
    """Whether ``images`` is the start of the file-backed buffer ``image_buffer`` made for ``path``."""
    if not isinstance(images, torch.Tensor) or not images.is_contiguous() or images.storage_offset():
        return False
    return any(
        Path(array.filename) == path.resolve() and array.ctypes.data == images.data_ptr()
        for array in _BUFFERS
    )


def open_cache(folder: Path) -> DatasetBundle:
    """A bundle over a finished cache folder; labels and groups are small and read whole."""
    meta = json.loads((folder / "meta.json").read_text())
    splits = {}
    for split_name, info in meta["splits"].items():
        groups_path = folder / f"{split_name}.groups.npy"
        splits[split_name] = Split(
            DiskImages(folder / f"{split_name}.images.u8", tuple(info["shape"])),  # type: ignore[arg-type]
            torch.from_numpy(np.load(folder / f"{split_name}.labels.npy")),
            torch.from_numpy(np.load(groups_path)) if groups_path.is_file() else None,
            list(info["skipped"]),
        )
    return DatasetBundle(
        name=meta["name"],
        splits=splits,
        class_names=meta["class_names"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        test_splits=meta["test_splits"],
        main_test_split=meta["main_test_split"],
        group_names=meta["group_names"],
        augment=meta["augment"],
    )
