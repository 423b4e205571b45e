"""State and cached data access shared by every page.

State lives in two places only: the run store on disk (everything a run produced) and the URL's query
parameters (which run a page shows), so a refresh, a new tab or a server restart shows the same thing.
Heavy objects (models, datasets, predictions) are cached per run and keyed by the file's mtime, so a run
that finishes while the page is open is picked up without a stale cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from masktune_core.errors import MaskTuneError
from masktune_core.runs import Run, RunStore, default_runs_dir, read_json

log = logging.getLogger("masktune_studio")

PAGES = {
    "runs": "views/home.py",
    "launch": "views/launch.py",
    "results": "views/results.py",
    "masks": "views/masks.py",
    "selective": "views/selective.py",
    "try": "views/try_image.py",
}
MODEL_LABELS = {"erm": "ERM", "masktune": "MaskTune", "randmask": "RandMask"}


# ---------------------------------------------------------------------- store and run selection
def store() -> RunStore:
    """The run store named by MASKTUNE_RUNS_DIR (read on every call, so tests can point it elsewhere)."""
    return RunStore(default_runs_dir())


def run_label(run: Run) -> str:
    # No state here: a select box keeps the label it first drew, so a state in it would go stale.
    config = run.config()
    name = config.get("name") or run.id
    return f"{name} · {config.get('dataset')} / {config.get('backbone')}"


def run_picker(
    label: str = "Run",
    *,
    param: str = "run",
    states: tuple[str, ...] | None = ("done",),
    container: Any = None,
) -> Run | None:
    """A select box over runs, its choice mirrored in the URL (``?run=ID``) so links and refreshes keep it.

    Shows an explanation and returns None when no run qualifies.
    """
    where = container or st
    runs = [r for r in store().list() if states is None or r.status().get("state") in states]
    if not runs:
        wanted = " or ".join(states) if states else "any"
        where.info(
            f"No run in state {wanted} yet. Start one on the **Launch** page "
            "(or `python -m masktune_core run`)."
        )
        return None
    ids = [r.id for r in runs]
    wanted_id = st.query_params.get(param)
    index = ids.index(wanted_id) if wanted_id in ids else 0
    if wanted_id and wanted_id not in ids:
        where.warning(
            f"Run {wanted_id!r} from the link is not available here; showing the newest run instead."
        )
    by_id = {r.id: r for r in runs}
    chosen = where.selectbox(
        label, ids, index=index, format_func=lambda i: run_label(by_id[i]), key=f"pick_{param}"
    )
    if st.query_params.get(param) != chosen:
        st.query_params[param] = chosen
    return by_id[chosen]


def link(page: str, label: str, run_id: str | None = None, icon: str | None = None) -> None:
    st.page_link(PAGES[page], label=label, icon=icon, query_params={"run": run_id} if run_id else None)


# ---------------------------------------------------------------------- cached readers
def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def metrics(run: Run) -> dict[str, Any] | None:
    return _json_file(str(run.file("metrics.json")), _mtime(run.file("metrics.json")))


@st.cache_data(show_spinner=False, max_entries=64)
def _json_file(path: str, mtime: float) -> dict[str, Any] | None:
    return read_json(path)


def dataset_summary(run: Run) -> dict[str, Any]:
    return _json_file(str(run.file("dataset.json")), _mtime(run.file("dataset.json"))) or {}


def predictions(run: Run, split: str) -> dict[str, np.ndarray] | None:
    path = run.predictions_path(split)
    return _predictions(str(run.path), split, _mtime(path))


@st.cache_data(show_spinner=False, max_entries=32)
def _predictions(run_path: str, split: str, mtime: float) -> dict[str, np.ndarray] | None:
    return Run(Path(run_path)).predictions(split)


def models(run: Run) -> dict[str, Any]:
    """The run's trained models (CPU, eval mode), cached per run: name -> Classifier."""
    stamps = tuple(_mtime(run.checkpoint_path(n)) for n in MODEL_LABELS)
    return _models(str(run.path), stamps)


@st.cache_resource(show_spinner="Loading models…", max_entries=4)
def _models(run_path: str, stamps: tuple[float, ...]) -> dict[str, Any]:
    from masktune_core import models as model_lib

    run = Run(Path(run_path))
    config, summary = run.config(), dataset_summary(run)
    loaded = {}
    for name in MODEL_LABELS:
        path = run.checkpoint_path(name)
        if not path.exists():
            continue
        model = model_lib.build_model(
            config["backbone"],
            len(summary["class_names"]),
            summary["channels"],
            summary["image_size"],
            summary["mean"],
            summary["std"],
        )
        model_lib.load_state(model, path)
        loaded[name] = model.eval()
    return loaded


def bundle(run: Run):
    """The run's dataset, read from the dataset cache (memory-mapped: pages read only the rows they show)."""
    return _bundle(str(run.file("config.json")), _mtime(run.file("config.json")))


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=2)
def _bundle(config_path: str, mtime: float):
    from masktune_core.config import RunConfig
    from masktune_core.data.cache import load_dataset

    config = RunConfig.from_dict(read_json(config_path))
    return load_dataset(config.dataset, config.data_options())


# ---------------------------------------------------------------------- presentation helpers
@contextlib.contextmanager
def friendly_errors(what: str = "This page") -> Iterator[None]:
    """Show a user one sentence instead of a traceback; the traceback goes to the server log."""
    try:
        yield
    except MaskTuneError as err:
        st.error(str(err))
    except Exception:  # a page must never show a raw traceback
        log.exception("page error")
        st.error(f"{what} hit an unexpected error; the details are in the server log.")


def pct(value: float | None, digits: int = 1) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else f"{100 * value:.{digits}f}%"
    )


def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def runs_dir_label() -> str:
    return os.path.abspath(default_runs_dir())
