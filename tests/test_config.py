"""RunConfig's refusals: an option a run would silently ignore is refused in one line naming the option
and the reason, from what the dataset's registry entry declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from masktune_core.config import RunConfig
from masktune_core.data import DATASETS, dataset_names
from masktune_core.errors import ConfigError


def refused(**values: object) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values).resolved()
    return err.value


def test_worst_group_selection_needs_groups() -> None:
    err = refused(dataset="digits", selection="worst_group")
    assert err.field == "selection" and "digits" in str(err)
    assert RunConfig.from_dict({"dataset": "biased-digits", "selection": "worst_group"}).resolved()


def test_worst_group_on_an_image_folder_depends_on_its_groups_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert (
        refused(dataset="imagefolder", data_dir=str(tmp_path), selection="worst_group").field == "selection"
    )
    (tmp_path / "groups.csv").write_text("path,group\n")
    RunConfig.from_dict({"dataset": "imagefolder", "data_dir": str(tmp_path), "selection": "worst_group"})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"dataset": "mnist", "train_copies": 4}, "train_copies"),
        ({"dataset": "digits", "square_size": 3}, "square_size"),
        ({"dataset": "mnist", "square_color": "0,255,0"}, "square_color"),
        ({"dataset": "digits", "square_position": "bottom-right"}, "square_position"),
        ({"dataset": "digits", "bias_ratio": 0.9}, "bias_ratio"),
        ({"dataset": "biased-digits", "optimizer": "adam", "momentum": 0.5}, "momentum"),
    ],
)
def test_options_a_dataset_or_optimizer_would_ignore_are_refused(values: dict, field: str) -> None:
    err = refused(**values)
    assert err.field == field
    assert "\n" not in str(err)


def test_val_fraction_is_refused_where_the_data_bring_their_own_val(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("img_filename,y,split,place\n")
    assert refused(dataset="waterbirds", data_dir=str(tmp_path), val_fraction=0.2).field == "val_fraction"
    folder = tmp_path / "folder"
    (folder / "train" / "a").mkdir(parents=True)
    RunConfig.from_dict({"dataset": "imagefolder", "data_dir": str(folder), "val_fraction": 0.2})
    (folder / "val" / "a").mkdir(parents=True)
    assert refused(dataset="imagefolder", data_dir=str(folder), val_fraction=0.2).field == "val_fraction"


def test_options_that_act_are_accepted() -> None:
    config = RunConfig.from_dict(
        {"dataset": "biased-digits", "train_copies": 2, "square_size": 4, "bias_ratio": 0.9}
    ).resolved()
    assert (config.train_copies, config.square_size, config.bias_ratio) == (2, 4, 0.9)
    assert RunConfig.from_dict({"dataset": "mnist", "optimizer": "adam"}).resolved().optimizer == "adam"
    assert RunConfig.from_dict({"dataset": "mnist", "val_fraction": 0.2}).val_fraction == 0.2


def test_the_registry_declares_what_each_dataset_is() -> None:
    assert all(DATASETS[name].biased for name in dataset_names() if name.startswith("biased-"))
    assert not any(DATASETS[name].biased for name in ("digits", "mnist", "waterbirds", "imagefolder"))
    assert DATASETS["biased-digits"].train_copies and not DATASETS["biased-mnist"].train_copies
    assert DATASETS["waterbirds"].own_val is True and DATASETS["mnist"].own_val is False
