"""Shared types of the dataset registry.

Every dataset is decoded once into raw uint8 pixels in memory. Masks and fills
act on raw pixels; normalisation happens inside the model (see ``models.Classifier``),
so a black mask is exactly 0 before normalisation, as in the method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from masktune_core.recipes import Recipe

_FINGERPRINT_CHUNK = 4096  # rows hashed at a time


@dataclass
class Split:
    """One split: ``images`` uint8 [N, C, H, W]; ``labels`` int64 [N]; ``groups`` int64 [N] or None."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)  # files that failed to decode and were skipped

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the decoded pixels, labels and groups, in order: a run records it, so a dataset
        edited since (same size, other images, or the same images reordered) is told apart from the one
        its masks and predictions line up with. About 0.15 s for 35k images of 3x28x28."""
        digest = hashlib.sha256()
        for tensor in (self.images, self.labels, self.groups):
            if tensor is not None:
                dtype = tensor[0:0].numpy().dtype.str
                digest.update(repr((dtype, tuple(tensor.shape))).encode())
                # In chunks: the images may be a cache on disk, read a slice at a time.
                for start in range(0, len(tensor), _FINGERPRINT_CHUNK):
                    array = tensor[start : start + _FINGERPRINT_CHUNK].contiguous().numpy()
                    digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

    def subset(self, index: torch.Tensor) -> Split:
        return Split(
            self.images[index],
            self.labels[index],
            None if self.groups is None else self.groups[index],
            list(self.skipped),
        )


DEFAULT_VAL_FRACTION = 0.1


@dataclass
class DataOptions:
    """Options every builder receives. Builders ignore what does not apply to them."""

    data_dir: str | None = None
    image_size: int | None = None
    download: bool = False
    seed: int = 0
    val_fraction: float | None = None  # None: the dataset's own default
    bad_images: str = "skip"  # "skip": count, skip and list a corrupt image; "fail": stop naming it
    # biased-square protocol
    square_size: int = 5
    square_color: tuple[int, int, int] = (255, 0, 0)
    square_position: str = "top-left"  # top-left | top-right | bottom-left | bottom-right
    bias_ratio: float = 0.99
    train_copies: int = 8  # random-affine copies per training image (biased-digits, digits)


@dataclass
class DatasetBundle:
    """What a builder returns: named splits plus what training and evaluation need to know."""

    name: str
    splits: dict[str, Split]  # always "train" and "val", plus the test split(s)
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, on pixels scaled to [0, 1]
    std: tuple[float, ...]
    test_splits: list[str]  # e.g. ["test"] or ["test_original", "test_biased"]
    main_test_split: str
    group_names: list[str] | None = None  # group id -> readable name; None if no groups
    augment: str = "crop"  # training augmentation policy: "none" | "crop" | "crop-flip" | "affine"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.splits["train"].images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.splits["train"].images.shape[-1])

    @property
    def eval_splits(self) -> list[str]:
        return ["val", *self.test_splits]

    @property
    def skipped(self) -> list[str]:
        return [path for split in self.splits.values() for path in split.skipped]


# A property of a dataset that is either fixed or depends on the files found in ``data_dir``.
Declared = bool | Callable[[DataOptions], bool]


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry. ``recipe`` holds the options (epochs, lr, ...) a run uses unless told otherwise;
    ``recipes`` refines it per training regime or backbone (keys ``scratch``, ``pretrained`` or
    ``<backbone>/<regime>``; see masktune_core.recipes).

    The declared properties say which options act on this dataset, so config validation can refuse an
    option that would be ignored instead of guessing from the builder.
    """

    name: str
    description: str
    builder: Callable[[DataOptions], DatasetBundle]
    needs_data_dir: bool
    recipe: Recipe = field(default_factory=Recipe)
    recipes: dict[str, Recipe] = field(default_factory=dict)
    # Returns (available, human-readable reason) without loading the data.
    availability: Callable[[DataOptions], tuple[bool, str]] | None = None
    biased: bool = False  # the coloured-square protocol: square_* and bias_ratio act
    train_copies: bool = False  # the training split is expanded with random-affine copies
    groups: Declared = False  # every image has a group label, so worst-group scores exist
    own_val: Declared = False  # the data bring their own val split, so val_fraction does not act

    def has_groups(self, options: DataOptions) -> bool:
        return self.groups(options) if callable(self.groups) else self.groups

    def has_own_val(self, options: DataOptions) -> bool:
        return self.own_val(options) if callable(self.own_val) else self.own_val
