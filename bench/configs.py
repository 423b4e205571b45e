"""Comparing a stored run's config with the config a benchmark asks for, across product versions."""

from __future__ import annotations

import dataclasses
from typing import Any

from masktune_core.config import RunConfig
from masktune_core.runs import Run

# How a run made before an option existed behaved, for options whose default comes from the recipe; an
# option with a plain default behaved as that default (a new option's default keeps the old behaviour).
EARLIER_BEHAVIOUR = {"finetune_start": "best"}


def stored_config(run: Run) -> dict[str, Any]:
    """A run's stored config, with any option added to the product since the run was made as it behaved."""
    stored = run.config()
    if not stored:
        return {}
    added = {
        f.name: EARLIER_BEHAVIOUR.get(f.name, f.default)
        for f in dataclasses.fields(RunConfig)
        if f.name not in stored
    }
    return {**added, **stored}
