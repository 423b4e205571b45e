"""Grey-scale source images for the suite: Debian's Fashion-MNIST files and scikit-learn's digits.

Both come back as float arrays [N, 32, 32] in 0..1 with a black background, the object centred, so every cue
renderer sees the same kind of input.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from masktune_core.data.digits import SOURCE_MAX, affine_copies, fit_to_box, load_digits_arrays
from masktune_core.data.torchvision_sets import FASHION_MNIST_SYSTEM_DIR
from masktune_core.errors import DataError

SIZE = 32  # the runs use --image-size 32; images are written at that size so nothing is resampled
FASHION_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# Share of the digits' originals held out for test and for val (the rest is train), split per label.
DIGITS_TEST_SHARE, DIGITS_VAL_SHARE = 0.3, 0.15
# Affine copies per original in each pool, so a pool holds enough images for the requested split sizes.
DIGITS_COPIES = {"train": 4, "val": 4, "test": 4}


@dataclass(frozen=True)
class Pool:
    """Candidate images of one split, with their binary task labels."""

    images: np.ndarray  # float32 [N, SIZE, SIZE] in 0..1
    labels: np.ndarray  # int64 [N], 0 or 1


def _read_idx(path: Path, header: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as file:
            return np.frombuffer(file.read(), dtype=np.uint8, offset=header)
    except OSError as err:
        raise DataError(str(path), f"cannot read Debian's Fashion-MNIST file: {err}") from err


def _fashion(prefix: str, classes: tuple[int, int]) -> Pool:
    images = _read_idx(FASHION_MNIST_SYSTEM_DIR / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(FASHION_MNIST_SYSTEM_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    keep = np.isin(labels, classes)
    pad = (SIZE - 28) // 2  # pad rather than resample: the garment keeps its pixels
    padded = np.pad(images[keep], ((0, 0), (pad, pad), (pad, pad))).astype(np.float32) / 255.0
    return Pool(padded, (labels[keep] == classes[1]).astype(np.int64))


def fashion_pools(classes: tuple[int, int]) -> dict[str, Pool]:
    """Train and val pools from the official train set (the same pool: the caller draws disjoint rows),
    test from the official test set. Label 1 = ``classes[1]``."""
    train = _fashion("train", classes)
    return {"train": train, "val": train, "test": _fashion("t10k", classes)}


def digits_pools(threshold: int, seed: int) -> dict[str, Pool]:
    """Digits ``>= threshold`` are label 1. The 1,797 originals are split per label (seeded) before any
    copies are drawn, so no split holds a copy of another split's original."""
    raw, target = load_digits_arrays()
    labels = (target >= threshold).astype(np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test, n_val = round(len(rows) * DIGITS_TEST_SHARE), round(len(rows) * DIGITS_VAL_SHARE)
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    boxed = fit_to_box(torch.from_numpy(raw).float().unsqueeze(1) / SOURCE_MAX, SIZE)
    generator = torch.Generator().manual_seed(seed)
    pools = {}
    for split, chunks in parts.items():
        rows = np.concatenate(chunks)
        originals = boxed[torch.from_numpy(rows)]
        copies = affine_copies(originals, DIGITS_COPIES[split], generator)
        images = torch.cat([originals, copies]).clamp(0, 1).squeeze(1).numpy()
        pools[split] = Pool(images, np.tile(labels[rows], DIGITS_COPIES[split] + 1))
    return pools
