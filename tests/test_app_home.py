"""The Runs page (views/home.py) in AppTest: empty state, table, deep link, resume, delete."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from masktune_core.runs import RunStore, process_start_time
from tests.apptest_pages import open_page

pytestmark = pytest.mark.usefixtures("fresh_caches")


def open_runs(run_id: str | None = None) -> AppTest:
    return open_page("runs", **({"run": run_id} if run_id else {}))


def texts(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("markdown", "caption", "info", "warning", "error", "subheader", "title")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def test_empty_store_explains_the_first_step(empty_store: RunStore) -> None:
    at = open_runs()
    assert "No runs yet" in texts(at)
    assert any(b.label == "Launch the demo run" for b in at.button)
    assert any("masktune run" in c.value for c in at.code)


def test_demo_button_queues_a_run_and_opens_its_progress(
    empty_store: RunStore, spawned: list[list[str]]
) -> None:
    at = open_runs()
    next(b for b in at.button if b.label == "Launch the demo run").click().run()
    runs = empty_store.list()
    assert len(runs) == 1
    assert runs[0].id in spawned[0] and "resume" in spawned[0]
    assert runs[0].config()["name"] == "demo"
    assert runs[0].raw_status()["state"] == "queued"
    assert at.query_params["run"] == runs[0].id
    assert at.title[0].value == "Launch an experiment"


def test_table_shows_the_headline_numbers_of_metrics_json(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    split = metrics["main_test_split"]
    at = open_runs()
    frame = at.dataframe[0].value
    assert list(frame["name"]) == ["tiny"]
    assert frame["state"].iloc[0] == "done"
    for model in ("erm", "masktune"):
        expected = metrics["splits"][split][model]
        assert frame[f"{model}_acc"].iloc[0] == pytest.approx(100 * expected["accuracy"])
        assert frame[f"{model}_wga"].iloc[0] == pytest.approx(100 * expected["worst_group_accuracy"])
    assert frame["verdict"].iloc[0] == metrics["verdict"]["label"]
    # The split is named once above the table and in every metric column's tooltip.
    assert any(f"worst-group accuracy on `{split}`" in c.value for c in at.caption)
    columns = json.loads(at.dataframe[0].proto.columns)
    assert split in columns["masktune_wga"]["help"]
    assert "No run selected" in texts(at)


def test_a_running_run_without_metrics_sits_beside_a_finished_one(finished_store: RunStore) -> None:
    done = finished_store.list()[0]
    running = finished_store.create({**done.config(), "name": "second"})
    alive = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())}  # this process stands in
    running.update_status(
        state="running", stage="masks_1", progress=0.42, started=done.raw_status()["started"], **alive
    )
    at = open_runs()
    frame = at.dataframe[0].value.set_index("name")
    assert frame.loc["second", "state"] == "running · masks 1"
    assert frame.loc["second", "progress"] == pytest.approx(42)
    assert pd.isna(frame.loc["second", "masktune_acc"])
    assert frame.loc["tiny", "masktune_acc"] == pytest.approx(
        100 * done.metrics()["splits"][done.metrics()["main_test_split"]]["masktune"]["accuracy"]
    )


def test_deep_link_selects_the_run_and_links_the_analysis_pages(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    at = open_runs(run.id)
    assert [s.value for s in at.subheader] == ["tiny"]
    links = {e.proto.label: e.proto for e in at.get("page_link")}
    for label in ("Results", "Masks", "Selective classification", "Try an image", "Job progress"):
        assert links[label].query_string == f"run={run.id}"
        assert not links[label].disabled


def test_analysis_links_wait_for_a_finished_run(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    run.update_status(state="failed", error="stage erm: out of memory")
    at = open_runs(run.id)
    links = {e.proto.label: e.proto for e in at.get("page_link")}
    assert links["Results"].disabled and links["Masks"].disabled
    assert any("out of memory" in e.value for e in at.error)
    assert f"resume_{run.id}" in [b.key for b in at.button]


def test_delete_asks_for_confirmation_then_removes_the_run(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    at = open_runs(run.id)
    at.button(key=f"delete_{run.id}").click().run()
    assert run.path.exists(), "the first click only asks"
    assert "cannot be undone" in texts(at)
    at.button(key=f"confirm_delete_{run.id}").click().run()
    assert not at.exception
    assert finished_store.list() == []
    assert "No runs yet" in texts(at)


def test_keep_it_cancels_the_delete(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    at = open_runs(run.id)
    at.button(key=f"delete_{run.id}").click().run()
    at.button(key=f"keep_{run.id}").click().run()
    assert run.path.exists()
    assert "cannot be undone" not in texts(at)


def test_delete_of_an_active_run_is_refused_with_the_engines_message(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    # This test process stands in for the job process, so the run counts as alive and running.
    run.update_status(
        state="running", stage="erm", pid=os.getpid(), pid_start=process_start_time(os.getpid())
    )
    at = open_runs(run.id)
    at.button(key=f"delete_{run.id}").click().run()
    at.button(key=f"confirm_delete_{run.id}").click().run()
    assert run.path.exists()
    assert any("still running; cancel it first" in e.value for e in at.error)


def test_resume_restarts_an_interrupted_run(finished_store: RunStore, spawned: list[list[str]]) -> None:
    run = finished_store.list()[0]
    run.update_status(state="running", stage="finetune_1", pid=None)  # no process: reads as interrupted
    at = open_runs(run.id)
    assert any("resume it" in e.value for e in at.error)
    at.button(key=f"resume_{run.id}").click().run()
    assert len(spawned) == 1 and run.id in spawned[0]
    assert run.raw_status()["state"] == "queued"


def test_done_runs_have_no_resume_button(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    at = open_runs(run.id)
    assert f"resume_{run.id}" not in [b.key for b in at.button]
