"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 scans in MNIST's layout, expanded.

1,797 images are too few to train a CNN well, so the training split is expanded with random affine copies
of every image, drawn once (seeded) and stored like any other image, so masks line up with them.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from masktune_core.data import register
from masktune_core.data.base import DataOptions, DatasetBundle, Split
from masktune_core.data.imageio import (
    channel_stats,
    image_size,
    seeded_generator,
    stratified_split,
    to_rgb,
    to_uint8,
)
from masktune_core.recipes import Recipe

DEFAULT_IMAGE_SIZE = 28
TEST_FRACTION = 0.3
# Larger than the usual 0.1: val holds only ~190 originals, and checkpoint selection needs a stable estimate.
VAL_FRACTION = 0.15
MAX_ROTATION_DEGREES = 12.0
MAX_SHIFT = 2 / 28  # of the image width: 2 px at 28 px
SCALE_RANGE = (0.9, 1.1)
# MNIST's layout: the digit fills a centred 20 px box of the 28 px frame, so the corners are background.
# Filled to the frame, digits reach the corner where the biased protocol paints its square, and a mask over
# the square also erased digit strokes on one class only: a new shortcut for the finetune to learn.
DIGIT_BOX = 20 / 28
SOURCE_MAX = 16.0  # load_digits() pixel values run 0..16
CLASS_NAMES = [str(digit) for digit in range(10)]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of ``sklearn.datasets.load_digits()``: float [1797, 8, 8] in 0..16, int64 [1797].

    ``load_digits`` itself first imports most of scikit-learn (about 1.4 s here) to read a 15 ms CSV, and
    this dataset is on the hot path of the default demo, so the bundled CSV is read directly when found.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def fit_to_box(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images [N, C, h, w] upsampled into a centred box of ``DIGIT_BOX`` of a black ``size`` frame."""
    box = max(round(size * DIGIT_BOX), 1)
    images = F.interpolate(images, size=(box, box), mode="bilinear", align_corners=False)
    before = (size - box) // 2
    after = size - box - before
    return F.pad(images, (before, after, before, after))


def affine_copies(images: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    """``copies`` random affine versions of every float image [N, C, H, W], copy-major: [copies * N, ...].

    Rotation up to +-12 degrees, shift up to +-2/28 of the width, scale 0.9..1.1; one batched
    ``grid_sample`` for all of them. The background outside the source is 0 (black), as in the scans.
    """
    n = images.shape[0] * copies
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEGREES)
    scale = SCALE_RANGE[0] + torch.rand(n, generator=generator) * (SCALE_RANGE[1] - SCALE_RANGE[0])
    # Normalised coordinates span 2 units over the width.
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * MAX_SHIFT)
    # affine_grid maps output coordinates to input ones, so theta is the inverse of scale-rotate-shift.
    cos, sin = angle.cos() / scale, angle.sin() / scale
    inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=2)
    height, width = images.shape[-2:]
    # Same grid as F.affine_grid(align_corners=False), whose batched matmul is several times slower here.
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).view(-1, 3)
    grid = torch.einsum("pk,njk->npj", base, theta).view(n, height, width, 2)
    source = images.repeat(copies, 1, 1, 1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _expanded(images: torch.Tensor, labels: torch.Tensor, copies: int, generator: torch.Generator) -> Split:
    """Originals followed by their affine copies, as uint8 RGB."""
    if copies:
        images = torch.cat([images, affine_copies(images, copies, generator)])
        labels = labels.repeat(copies + 1)
    return Split(to_rgb(to_uint8(images)), labels)


@register(
    "digits",
    "scikit-learn's 1,797 real 8x8 handwritten digits, upsampled, with random affine copies for training",
    recipe=Recipe(
        backbone="small-cnn",
        epochs=5,
        batch_size=128,
        lr=0.01,
        finetune_lr=0.005,
        optimizer="sgd",
        image_size=DEFAULT_IMAGE_SIZE,
        train_copies=8,
    ),
    train_copies=True,
)
def build_digits(options: DataOptions) -> DatasetBundle:
    """Stratified seeded test (30%) / val (15% of the rest) / train; train and val expanded with
    ``options.train_copies`` affine copies per image; test never expanded.

    Images are RGB (three equal channels) so the coloured-square protocol composes with this set and a
    model trained here takes the same input as one trained on ``biased-digits``.
    """
    size = image_size(options, DEFAULT_IMAGE_SIZE)
    copies = options.train_copies

    raw, target = load_digits_arrays()
    images = torch.from_numpy(raw).float().unsqueeze(1) * (255.0 / SOURCE_MAX)
    images = fit_to_box(images, size)
    labels = torch.from_numpy(target)

    rest, test = stratified_split(labels, TEST_FRACTION, seeded_generator(options.seed, "test"))
    train_pos, val_pos = stratified_split(
        labels[rest], options.val_fraction or VAL_FRACTION, seeded_generator(options.seed, "val")
    )
    train_idx, val_idx = rest[train_pos], rest[val_pos]

    augment = seeded_generator(options.seed, "affine")
    train = _expanded(images[train_idx], labels[train_idx], copies, augment)
    # Val is expanded the same way: ~190 originals give a noisy accuracy for checkpoint selection.
    val = _expanded(images[val_idx], labels[val_idx], copies, augment)
    test_split = Split(to_rgb(to_uint8(images[test])), labels[test])

    mean, std = channel_stats(train.images)
    return DatasetBundle(
        name="digits",
        splits={"train": train, "val": val, "test": test_split},
        class_names=list(CLASS_NAMES),
        mean=mean,
        std=std,
        test_splits=["test"],
        main_test_split="test",
        augment="affine",
    )
