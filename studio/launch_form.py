"""The Launch page's experiment form and the job helpers it shares with the Runs page.

The form never validates on its own: every value goes through ``RunConfig.from_dict(...).resolved()``, so
the dashboard, the CLI and config files accept exactly the same options and give the same messages.
Widgets that carry a dataset's recipe are keyed per dataset, so picking another dataset shows that
dataset's defaults instead of keeping the previous one's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import streamlit as st

from masktune_core import config as config_lib
from masktune_core.config import RunConfig
from masktune_core.errors import ConfigError, MaskTuneError

# The pages show each queued run's place in line; the engine's job queue is the one place that orders it.
from masktune_core.jobs import queue_positions as queue_positions
from masktune_core.runs import ACTIVE_STATES, Run, RunStore
from studio.finetune_inputs import LABELS as FINETUNE_LABELS
from studio.finetune_inputs import finetune_inputs

DEFAULTS = RunConfig()

# Human labels for config fields, used by the widgets and to name the field in a validation message.
LABELS = {
    "dataset": "Dataset",
    "data_dir": "Data folder",
    "download": "Allow download",
    "name": "Run name",
    "backbone": "Backbone",
    "epochs": "ERM epochs",
    "batch_size": "Batch size",
    "optimizer": "Optimizer",
    "lr": "ERM learning rate",
    "finetune_lr": "Finetune learning rate",
    **FINETUNE_LABELS,
    "finetune_selection": "Finetune choice",
    "patience": "Early-stopping patience (epochs)",
    "cam_method": "Saliency method",
    "threshold_rule": "Mask threshold rule",
    "topk_percent": "Top-k %",
    "mask_dilation": "Mask dilation (px)",
    "fill": "Fill of masked pixels",
    "iterations": "MaskTune iterations",
    "randmask": "RandMask baseline",
    "selection": "ERM checkpoint selection",
    "schedule": "Learning-rate schedule",
    "seed": "Seed",
    "seeds": "Seeds (a seed study)",
    "device": "Device",
    "nproc": "Processes",
    "square_size": "Square size (px)",
    "square_color": "Square colour",
    "square_position": "Square position",
    "bias_ratio": "Bias ratio",
    "train_copies": "Training copies per image",
    "image_size": "Image size (px)",
}


@dataclass(frozen=True)
class DatasetChoice:
    """What the form needs to know about the chosen dataset."""

    name: str
    description: str
    recipe: dict[str, Any]
    needs_data_dir: bool
    biased: bool  # the coloured-square protocol applies (square size, colour, bias ratio)
    augmented_copies: bool  # the builder expands training images into random-affine copies


def dataset_choice(name: str) -> DatasetChoice:
    from masktune_core.data import get_dataset_info

    info = get_dataset_info(name)
    return DatasetChoice(
        name=name,
        description=info.description,
        recipe=recipe_defaults(name),
        needs_data_dir=info.needs_data_dir,
        biased=info.biased,
        augmented_copies=info.train_copies,
    )


def recipe_defaults(name: str) -> dict[str, Any]:
    """The dataset's recipe for its own backbone, trained from scratch, with its finetune candidates."""
    from masktune_core.recipes import recipe_for

    recipe = recipe_for(name).as_dict()
    recipe.setdefault("finetune_lrs", (recipe["finetune_lr"],))
    recipe.setdefault("finetune_fills", (DEFAULTS.fill,))
    return recipe


def availability(name: str, data_dir: str | None, download: bool) -> tuple[bool, str]:
    from masktune_core.data import DataOptions, dataset_availability

    return dataset_availability(name, DataOptions(data_dir=data_dir or None, download=download))


def error_text(err: ConfigError) -> str:
    """The engine's message, led by the widget's label so the user sees which input to fix."""
    label = LABELS.get(err.field)
    return f"**{label}** — {err}" if label else str(err)


def hex_to_rgb(color: str) -> str:
    color = color.lstrip("#")
    return ",".join(str(int(color[i : i + 2], 16)) for i in (0, 2, 4))


def rgb_to_hex(rgb: tuple[int, int, int] | list[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


# ---------------------------------------------------------------------- queue
def active_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.status().get("state") in ACTIVE_STATES]


def progress_column(label: str = "Progress") -> Any:
    """A table column for overall progress given in percent (0 to 100)."""
    return st.column_config.ProgressColumn(label, min_value=0, max_value=100, format="%.0f%%", width="small")


def stage_plan(config: dict[str, Any]) -> list[str]:
    """The stages this run will go through, in order (the pipeline's own plan)."""
    from masktune_core.pipeline import plan_stages

    try:
        return ["data", *(name for name, _ in plan_stages(RunConfig.from_dict(config)))]
    except MaskTuneError:
        return []


# ---------------------------------------------------------------------- the form
def dataset_inputs() -> tuple[DatasetChoice, str | None, bool]:
    """Dataset select box (outside the form, so the recipe defaults below follow it) and its data source.

    Returns the choice, the data folder ("" -> None) and whether downloading is allowed.
    """
    from masktune_core.data import dataset_names

    names = dataset_names()
    name = st.selectbox(
        LABELS["dataset"],
        names,
        index=names.index(DEFAULTS.dataset),
        key="launch.dataset",
        help="Every dataset comes with a recipe (backbone, epochs, learning rates) that fills the form.",
    )
    choice = dataset_choice(name)
    st.caption(choice.description)
    available, reason = availability(name, None, False)
    data_dir, download = None, False
    if choice.needs_data_dir or not available:
        data_dir = st.text_input(
            LABELS["data_dir"],
            key=f"launch.{name}.data_dir",
            placeholder="/path/to/the/dataset",
            help="Folder holding the dataset's files (--data-dir).",
        ).strip()
        if not choice.needs_data_dir:
            download = st.checkbox(
                LABELS["download"],
                key=f"launch.{name}.download",
                help="Fetch the files if missing (--download).",
            )
        available, reason = availability(name, data_dir, download)
    if available:
        st.success(f"Data available: {reason}", icon=":material/check_circle:")
    else:
        st.warning(f"Data not found: {reason}", icon=":material/folder_off:")
    return choice, data_dir or None, download


def experiment_form(choice: DatasetChoice, data_dir: str | None, download: bool) -> dict[str, Any] | None:
    """The hyperparameter form. Returns the raw option values when submitted, else None."""
    from masktune_core.models import MODELS

    recipe = choice.recipe

    def key(field: str) -> str:
        return f"launch.{choice.name}.{field}"

    values: dict[str, Any] = {"dataset": choice.name, "data_dir": data_dir, "download": download}
    with st.form("launch_form", border=True):
        values["name"] = (
            st.text_input(
                LABELS["name"], key=key("name"), placeholder=f"{choice.name} (optional)", max_chars=80
            ).strip()
            or None
        )
        backbones = list(MODELS)
        values["backbone"] = st.selectbox(
            LABELS["backbone"],
            backbones,
            index=backbones.index(recipe["backbone"]),
            key=key("backbone"),
            help="  \n".join(f"**{name}**: {info.description}" for name, info in MODELS.items()),
        )
        left, middle, right = st.columns(3)
        values["epochs"] = left.number_input(
            LABELS["epochs"], value=int(recipe["epochs"]), step=1, key=key("epochs")
        )
        values["batch_size"] = middle.number_input(
            LABELS["batch_size"], value=int(recipe["batch_size"]), step=16, key=key("batch_size")
        )
        values["optimizer"] = right.selectbox(
            LABELS["optimizer"],
            config_lib.OPTIMIZERS,
            index=config_lib.OPTIMIZERS.index(recipe["optimizer"]),
            key=key("optimizer"),
        )
        values["lr"] = st.number_input(
            LABELS["lr"], value=float(recipe["lr"]), step=0.001, format="%g", key=key("lr")
        )
        values.update(finetune_inputs(recipe, key))
        with st.expander("Advanced"):
            values.update(_advanced_inputs(choice, key))
        submitted = st.form_submit_button("Launch", type="primary", icon=":material/rocket_launch:")
    return values if submitted else None


def _grid(inputs: list[tuple[str, Any]], values: dict[str, Any], per_row: int = 2) -> None:
    """Lay (field, widget) pairs out in rows, so labels line up whichever fields a dataset uses."""
    for start in range(0, len(inputs), per_row):
        columns = st.columns(per_row)
        for column, (field, widget) in zip(columns, inputs[start : start + per_row], strict=False):
            values[field] = widget(column)


def _advanced_inputs(choice: DatasetChoice, key: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}

    def select(field: str, options: tuple[str, ...], help: str | None = None) -> tuple[str, Any]:
        # A field the dataset's recipe sets starts at the recipe's value.
        index = options.index(choice.recipe[field]) if field in choice.recipe else 0
        return field, lambda where: where.selectbox(
            LABELS[field], options, index=index, key=key(field), help=help
        )

    def number(field: str, value: float, step: float, help: str | None = None) -> tuple[str, Any]:
        fmt = None if isinstance(value, int) else "%g"
        return field, lambda where: where.number_input(
            LABELS[field], value=value, step=step, format=fmt, key=key(field), help=help
        )

    st.markdown("**Masking**")
    _grid(
        [
            select(
                "cam_method",
                config_lib.CAM_METHODS,
                "The paper: XGradCAM on the last conv block, for the predicted class.",
            ),
            select(
                "threshold_rule",
                config_lib.THRESHOLD_RULES,
                "mean+2std (the paper): mask pixels above μ + 2σ of the positive heat. topk: mask the "
                "hottest k % of pixels (biased-digits' recipe: its μ + 2σ masks leave part of the square).",
            ),
            number("topk_percent", DEFAULTS.topk_percent, 1.0, "Used by the topk rule only."),
            number("mask_dilation", DEFAULTS.mask_dilation, 1, "Grow each mask by this many pixels a side."),
            select("fill", config_lib.FILLS, "black (the paper): masked pixels become 0."),
            number(
                "iterations",
                int(choice.recipe["iterations"]),
                1,
                "Iterative MaskTune: re-mask with the finetuned model and finetune again.",
            ),
            (
                "randmask",
                lambda where: where.checkbox(
                    LABELS["randmask"],
                    value=DEFAULTS.randmask,
                    key=key("randmask"),
                    help="A control: finetune on random masks of the same area as the saliency masks.",
                ),
            ),
        ],
        values,
    )
    st.markdown("**Training**")
    _grid(
        [
            select(
                "selection",
                config_lib.SELECTIONS,
                "Keep the ERM epoch with the best validation accuracy, or the best worst-group accuracy.",
            ),
            number(
                "patience",
                int(choice.recipe["patience"]),
                1,
                "Stop ERM after this many epochs without a better val score (0: train every epoch).",
            ),
            select(
                "finetune_selection",
                config_lib.FINETUNE_SELECTIONS,
                "val: keep the finetune candidate with the best val worst-group (else worst-class) accuracy, "
                "or ERM when none beats it. none: one finetune at the first rate, kept (the paper).",
            ),
            select("schedule", config_lib.SCHEDULES),
            number("seed", DEFAULTS.seed, 1),
            (
                "seeds",
                lambda where: (
                    where.text_input(
                        LABELS["seeds"],
                        key=key("seeds"),
                        placeholder="e.g. 0,1,2 (optional)",
                        help="One run per seed, sharing every other setting, queued one after another "
                        "as one seed study; Results then shows the mean, the spread and one point per "
                        "seed. Leave it empty for a single run with the seed on the left.",
                    ).strip()
                    or None
                ),
            ),
            select("device", config_lib.DEVICES),
            *(
                [number("nproc", DEFAULTS.nproc, 1, "torchrun processes (DDP); they split each batch.")]
                if (os.cpu_count() or 1) > 1  # one core has nothing to share the work with
                else []
            ),
        ],
        values,
    )
    st.markdown("**Data**")
    data = [
        number("image_size", int(choice.recipe.get("image_size") or 32), 1, "Images are resized to this.")
    ]
    if choice.augmented_copies:
        data.append(
            number(
                "train_copies",
                int(choice.recipe["train_copies"]),
                1,
                "Random-affine copies of every training image (0: the originals only, fastest).",
            )
        )
    if choice.biased:
        data += [
            number(
                "square_size", DEFAULTS.square_size, 1, "Side of the coloured square, the spurious feature."
            ),
            (
                "square_color",
                lambda where: hex_to_rgb(
                    where.color_picker(
                        LABELS["square_color"], rgb_to_hex(DEFAULTS.square_color), key=key("square_color")
                    )
                ),
            ),
            select("square_position", config_lib.SQUARE_POSITIONS),
            number(
                "bias_ratio",
                DEFAULTS.bias_ratio,
                0.01,
                "Share of class-0 training images with the square (and of class-1 images without it).",
            ),
        ]
    _grid(data, values)
    return values


def validated_config(values: dict[str, Any]) -> RunConfig:
    """The engine's validation plus a data check, so a run is created only when it can start.

    Raises ConfigError naming the field.
    """
    config = RunConfig.from_dict(values).resolved()
    available, reason = availability(config.dataset, config.data_dir, config.download)
    if not available:
        raise ConfigError("data_dir", reason)
    return config


def submit(store: RunStore, values: dict[str, Any]) -> list[Run]:
    """Validate ``values`` and start the job, or one job per seed when ``seeds`` is given (a seed study,
    queued one after another); ConfigError / RunStoreError reach the caller before any run exists."""
    from masktune_core import jobs, studies

    values = dict(values)
    seeds = values.pop("seeds", None)
    config = validated_config(values)
    if not seeds:
        return [jobs.submit(store, config)]
    configs = studies.seed_configs(config, studies.parse_seeds(seeds))
    return [jobs.submit(store, one) for one in configs]
