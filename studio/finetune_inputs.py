"""The Launch form's finetune candidates: learning rates, fills, epochs, val checks and start (one row)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from masktune_core import config as config_lib

LABELS = {
    "finetune_lrs": "Finetune learning rates",
    "finetune_fills": "Finetune fills",
    "finetune_epochs": "Finetune epochs",
    "finetune_checks": "Val checks per epoch",
    "finetune_start": "Finetune starts from",
}


def finetune_inputs(recipe: dict[str, Any], key: Callable[[str], str]) -> dict[str, Any]:
    """Inputs for the finetune candidates, starting at the dataset's recipe; returns the form's values."""
    lrs, fills, epochs, checks, start = st.columns([3, 3, 2, 2, 2])
    return {
        "finetune_lrs": lrs.text_input(
            LABELS["finetune_lrs"],
            value=",".join(f"{lr:g}" for lr in recipe["finetune_lrs"]),
            key=key("finetune_lrs"),
            help="Comma-separated. Each learning rate with each fill is one candidate finetune from the "
            "same ERM model and masks; the run keeps the best on val, or ERM when none beats it.",
        ),
        "finetune_fills": fills.multiselect(
            LABELS["finetune_fills"],
            config_lib.FILLS,
            default=list(recipe["finetune_fills"]),
            key=key("finetune_fills"),
            help="black (the paper): masked pixels become 0. swap: they take another training image's "
            "pixels; transplant: they become 0 and another image's masked region is pasted at its place. "
            "Both show a cue there under every label.",
        ),
        **_count(
            epochs,
            "finetune_epochs",
            recipe,
            key,
            "1 is the method. Each candidate trains this many epochs on the masked images.",
        ),
        **_count(
            checks,
            "finetune_checks",
            recipe,
            key,
            "How often a candidate is scored on val in each epoch; it keeps its best check.",
        ),
        "finetune_start": ",".join(
            start.multiselect(
                LABELS["finetune_start"],
                config_lib.FINETUNE_STARTS,
                default=str(recipe["finetune_start"]).split(","),
                key=key("finetune_start"),
                help="best: the kept ERM checkpoint with a fresh optimizer. last: ERM's last epoch with its "
                "optimizer state, as the reference code does. Both: each lr and fill is tried from each.",
            )
        ),
    }


def _count(where: Any, field: str, recipe: dict[str, Any], key: Callable[[str], str], help: str) -> dict:
    value = where.number_input(
        LABELS[field], value=int(recipe[field]), min_value=1, step=1, key=key(field), help=help
    )
    return {field: value}
