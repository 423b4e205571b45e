"""Dataset registry: ``name -> DatasetInfo`` with one builder signature, ``builder(DataOptions)``."""

from __future__ import annotations

from collections.abc import Callable

from masktune_core.data.base import DataOptions, DatasetBundle, DatasetInfo, Declared, Split
from masktune_core.errors import ConfigError
from masktune_core.recipes import Recipe

DATASETS: dict[str, DatasetInfo] = {}


def register(
    name: str,
    description: str,
    *,
    needs_data_dir: bool = False,
    recipe: Recipe | None = None,
    recipes: dict[str, Recipe] | None = None,
    availability: Callable[[DataOptions], tuple[bool, str]] | None = None,
    biased: bool = False,
    train_copies: bool = False,
    groups: Declared = False,
    own_val: Declared = False,
) -> Callable[[Callable[[DataOptions], DatasetBundle]], Callable[[DataOptions], DatasetBundle]]:
    def wrap(builder: Callable[[DataOptions], DatasetBundle]) -> Callable[[DataOptions], DatasetBundle]:
        DATASETS[name] = DatasetInfo(
            name,
            description,
            builder,
            needs_data_dir,
            recipe or Recipe(),
            recipes or {},
            availability,
            biased=biased,
            train_copies=train_copies,
            groups=groups,
            own_val=own_val,
        )
        return builder

    return wrap


def get_dataset_info(name: str) -> DatasetInfo:
    _load_builtin()
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def dataset_names() -> list[str]:
    _load_builtin()
    return list(DATASETS)


def build_dataset(name: str, options: DataOptions) -> DatasetBundle:
    """Load dataset ``name``; ConfigError naming the option if ``options`` holds an invalid value."""
    from masktune_core.config import check_data_options

    info = get_dataset_info(name)
    check_data_options(options, info)
    return info.builder(options)


def dataset_availability(name: str, options: DataOptions) -> tuple[bool, str]:
    info = get_dataset_info(name)
    if info.availability is None:
        return True, "bundled, no download needed"
    return info.availability(options)


def _load_builtin() -> None:
    # Importing the family modules runs their @register decorators.
    from masktune_core.data import biased, digits, folders, torchvision_sets  # noqa: F401


__all__ = [
    "DATASETS",
    "DataOptions",
    "DatasetBundle",
    "DatasetInfo",
    "Split",
    "build_dataset",
    "dataset_availability",
    "dataset_names",
    "get_dataset_info",
    "register",
]
