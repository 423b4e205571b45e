"""What every dataset family shares: image decoding, seeded splits, statistics, group names.

Kept free of heavy imports (no torchvision, no pandas) because the registry imports every family
module, and the default demo's dataset must load in well under a second.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from masktune_core.data import cache
from masktune_core.data.base import DataOptions, Split
from masktune_core.errors import DataError

DATA_DIR_ENV = "MASKTUNE_DATA_DIR"
DEFAULT_DATA_DIR = "data"


def data_root(options: DataOptions) -> Path:
    """``options.data_dir``, else ``$MASKTUNE_DATA_DIR``, else ``data`` relative to the working directory."""
    return Path(options.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def seeded_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator seeded from ``seed`` and ``purpose``.

    The split, the augmentation and the squares draw independent streams from one user seed; one seed
    for all would make equal-length permutations identical.
    """
    return torch.Generator().manual_seed(zlib.crc32(f"{purpose}:{seed}".encode()))


def image_size(options: DataOptions, default: int) -> int:
    """``options.image_size``, or the dataset's ``default`` when unset (validated by ``build_dataset``)."""
    return default if options.image_size is None else options.image_size


def stratified_split(
    labels: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(kept, taken)``: ``round(fraction * n_c)`` random images of every class c are taken.

    Both index tensors are sorted, so the relative order of the source is kept.
    """
    kept, taken = [], []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(fraction * len(members))
        taken.append(members[:count])
        kept.append(members[count:])
    return torch.cat(kept).sort().values, torch.cat(taken).sort().values


def carve_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a source's training set into (train, val), stratified and seeded."""
    kept, taken = stratified_split(train.labels, fraction, seeded_generator(seed, "val"))
    return train.subset(kept), train.subset(taken)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images on the [0, 1] scale.

    A 256-bin histogram per channel avoids a float copy of the whole split.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    histograms = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    for start in range(0, len(images), 4096):  # in chunks: the split may be a memory-mapped file
        batch = images[start : start + 4096]
        for channel in range(images.shape[1]):
            histograms[channel] += torch.bincount(batch[:, channel].reshape(-1), minlength=256)
        cache.release_buffers()
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = histograms[channel]
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(max(float(var.sqrt()), 1e-6))  # a constant channel would divide by zero downstream
    return tuple(means), tuple(stds)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp_(0, 255).to(torch.uint8)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 [N, C, H, W] to size x size, in chunks."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].float()
        resized = F.interpolate(
            batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + chunk] = to_uint8(resized)
    return out


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """A new [N, 3, H, W] tensor: grey images repeated over three channels, RGB images copied."""
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images.clone()


def cross_group_names(class_names: Sequence[str], attribute_names: Sequence[str]) -> list[str]:
    """Names of ``group = len(attribute_names) * class + attribute``, e.g. "landbird / water"."""
    return [f"{cls} / {attr}" for cls in class_names for attr in attribute_names]


def _decode_one(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        if image.format == "JPEG":
            # Lets libjpeg decode at a reduced scale (still >= size), far cheaper for large photos.
            image.draft("RGB", (size, size))
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


DECODE_CHUNK = 1024  # images decoded per step: bounds the decoder's own memory on a large split


def decode_images(
    paths: Sequence[Path], size: int, bad_images: str, name: str = "images"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode image files into uint8 [N_kept, 3, size, size], whole image resized (no crop).

    Returns ``(images, kept_index, skipped_paths)``. An unreadable file (missing, zero bytes, corrupt,
    truncated) is skipped and listed with ``bad_images="skip"`` and raises DataError naming it with
    ``"fail"``. Pillow's LOAD_TRUNCATED_IMAGES is left False so a truncated file is an error rather than
    a half-grey image. Images are decoded in chunks into ``cache.image_buffer(name, ...)``, a file while
    the dataset cache is being built, so a split larger than memory decodes.
    """
    images = cache.image_buffer(name, (len(paths), 3, size, size))
    kept: list[int] = []
    skipped: list[str] = []
    # Pillow releases the GIL while decoding and resizing, so threads scale across cores.
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = range(start, min(start + DECODE_CHUNK, len(paths)))
            pixels = np.empty((len(chunk), size, size, 3), dtype=np.uint8)

            def work(i: int, pixels: np.ndarray = pixels, start: int = start) -> str | None:
                try:
                    pixels[i - start] = _decode_one(paths[i], size)
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                    return f"{type(exc).__name__}: {exc}"
                return None

            errors = list(pool.map(work, chunk))
            bad = [i for i, err in zip(chunk, errors, strict=True) if err is not None]
            if bad and bad_images == "fail":
                raise DataError(str(paths[bad[0]]), f"cannot read image ({errors[bad[0] - start]})")
            good = [i - start for i, err in zip(chunk, errors, strict=True) if err is None]
            images[len(kept) : len(kept) + len(good)] = torch.from_numpy(pixels[good]).permute(0, 3, 1, 2)
            kept += [start + i for i in good]
            skipped += [str(paths[i]) for i in bad]
            cache.report(f"decoding {name}", chunk.stop, len(paths))
    return images[: len(kept)], torch.tensor(kept, dtype=torch.int64), skipped
