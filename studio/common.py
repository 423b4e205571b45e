"""State and cached data access shared by every page.

What a page shows lives in two places: the run store on disk (everything a run produced) and the URL's
query parameters (which run, which split), so a refresh, a new tab or a server restart shows the same
thing. What only matters within one browser session (a pending delete, a page number, a picked sample,
tuner settings) is ``st.session_state``, and each page's keys are declared, read and written in one
module: ``runs_state`` (Runs), ``launch_state`` (Launch), ``masks_grid`` (Masks), ``selective_state``
(Selective) and ``try_state`` (Try an image); the launch form's widget keys live in ``launch_form``.
Heavy objects (models, datasets, predictions) are cached per run and keyed by the file's mtime, so a run
that finishes while the page is open is picked up without a stale cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from masktune_core.errors import MaskTuneError
from masktune_core.runs import ACTIVE_STATES, Run, RunStore, default_runs_dir, read_json

log = logging.getLogger("masktune_studio")

PAGES = {
    "runs": "views/home.py",
    "launch": "views/launch.py",
    "results": "views/results.py",
    "masks": "views/masks.py",
    "selective": "views/selective.py",
    "try": "views/try_image.py",
}
# Each page's title and icon, for the navigation (app.py) and for every link to it.
TITLES = {
    "runs": ("Runs", ":material/table_rows:"),
    "launch": ("Launch", ":material/rocket_launch:"),
    "results": ("Results", ":material/monitoring:"),
    "masks": ("Masks", ":material/grid_view:"),
    "selective": ("Selective classification", ":material/tune:"),
    "try": ("Try an image", ":material/add_photo_alternate:"),
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
        where.info(f"No run in state {wanted} yet. Start one on the **Launch** page (or `masktune run`).")
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


def run_links(run_id: str, pages: tuple[str, ...], disabled_help: str | None = None) -> None:
    """One row of links to ``pages`` showing ``run_id``; all disabled, with that tooltip, when it is given."""
    with st.container(horizontal=True, gap="medium"):
        for page in pages:
            title, icon = TITLES[page]
            st.page_link(
                PAGES[page],
                label=title,
                icon=icon,
                query_params={"run": run_id},
                disabled=disabled_help is not None,
                help=disabled_help,
            )


# ---------------------------------------------------------------------- cached readers
def mtime(path: Path) -> float:
    """The file's modification time, 0 for a missing file: the cache key that lets a rewritten file in."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def checkpoint_stamps(run: Run) -> tuple[float, ...]:
    """The mtimes of the run's checkpoints, so a retrained or resumed run is never served stale results."""
    return tuple(mtime(run.checkpoint_path(name)) for name in MODEL_LABELS)


def metrics(run: Run) -> dict[str, Any] | None:
    return _json_file(str(run.file("metrics.json")), mtime(run.file("metrics.json")))


@st.cache_data(show_spinner=False, max_entries=64)
def _json_file(path: str, mtime: float) -> dict[str, Any] | None:
    return read_json(path)


def dataset_summary(run: Run) -> dict[str, Any]:
    return _json_file(str(run.file("dataset.json")), mtime(run.file("dataset.json"))) or {}


def predictions(run: Run, split: str) -> dict[str, np.ndarray] | None:
    path = run.predictions_path(split)
    return _predictions(str(run.path), split, mtime(path))


@st.cache_data(show_spinner=False, max_entries=32)
def _predictions(run_path: str, split: str, mtime: float) -> dict[str, np.ndarray] | None:
    return Run(Path(run_path)).predictions(split)


def models(run: Run) -> dict[str, Any]:
    """The run's trained models (CPU, eval mode), cached per run: name -> Classifier."""
    return _models(str(run.path), checkpoint_stamps(run))


@st.cache_resource(show_spinner="Loading models…", max_entries=4)
def _models(run_path: str, stamps: tuple[float, ...]) -> dict[str, Any]:
    from masktune_core.models import load_run_models

    return load_run_models(run_path, MODEL_LABELS)


def bundle(run: Run):
    """The run's dataset, read from the dataset cache (memory-mapped: pages read only the rows they show)."""
    return _bundle(str(run.file("config.json")), mtime(run.file("config.json")))


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


def timestamp(value: str | None) -> datetime | None:
    """A status file's ISO time, or None when it is missing or unreadable."""
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def run_duration(status: dict[str, Any]) -> float | None:
    """Seconds from the run's start to its end, or to now while it is active; None before it starts."""
    start = timestamp(status.get("started"))
    if start is None:
        return None
    end = timestamp(status.get("finished")) if status.get("state") not in ACTIVE_STATES else None
    return ((end or datetime.now(UTC)) - start).total_seconds()


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
