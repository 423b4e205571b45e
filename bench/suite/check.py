"""Read a generated dataset back through the product's own loader and compare it with its card."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.suite.generate import read_card
from masktune_core.data import DataOptions, build_dataset
from masktune_core.errors import DataError


def loaded_group_counts(folder: Path) -> dict[str, list[int]]:
    """Images per group and split as ``masktune_core.data.build_dataset`` reads ``folder``."""
    info = read_card(folder)
    options = DataOptions(data_dir=str(folder), image_size=info["spec"]["image_size"], bad_images="fail")
    bundle = build_dataset(info["dataset"], options)
    counts = {}
    for split, data in bundle.splits.items():
        if data.groups is None:
            raise DataError(str(folder), f"the {info['dataset']} loader found no groups in split {split}")
        counts[split] = torch.bincount(data.groups, minlength=4).tolist()
    return counts


def check(folder: Path) -> dict[str, list[int]]:
    """DataError naming the folder when the loader's groups differ from the card's."""
    expected = read_card(folder)["group_counts"]
    counts = loaded_group_counts(folder)
    if counts != expected:
        raise DataError(str(folder), f"the product's loader reads groups {counts}, the card says {expected}")
    return counts
