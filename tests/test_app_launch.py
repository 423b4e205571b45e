"""The Launch page (views/launch.py) in AppTest: recipe defaults, validation, submit, the job panel."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from masktune_core.runs import RunStore, process_start_time
from studio import launch_form
from tests.apptest_pages import open_page

DATASET = "biased-digits"


pytestmark = pytest.mark.usefixtures("fresh_caches")


def open_launch(run_id: str | None = None) -> AppTest:
    return open_page("launch", **({"run": run_id} if run_id else {}))


def field(at: AppTest, kind: str, name: str, dataset: str = DATASET):
    return getattr(at, kind)(key=f"launch.{dataset}.{name}")


def launch(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception, at.exception
    return at


def test_empty_store_shows_the_form_and_explains_the_jobs_panel(empty_store: RunStore) -> None:
    at = open_launch()
    assert at.selectbox(key="launch.dataset").value == DATASET
    assert any("No jobs yet" in i.value for i in at.info)
    assert any("Data available" in s.value for s in at.success)


def test_the_form_holds_the_datasets_recipe_and_follows_a_dataset_change(empty_store: RunStore) -> None:
    from masktune_core.recipes import recipe_for

    at = open_launch()
    recipe = recipe_for(DATASET).as_dict()
    assert field(at, "number_input", "epochs").value == recipe["epochs"]
    assert field(at, "number_input", "lr").value == pytest.approx(recipe["lr"])
    assert field(at, "selectbox", "backbone").value == recipe["backbone"]
    assert field(at, "number_input", "train_copies").value == recipe["train_copies"]  # a digits set: offered
    assert field(at, "selectbox", "threshold_rule").value == recipe["threshold_rule"]

    at.selectbox(key="launch.dataset").set_value("waterbirds").run()
    waterbirds = recipe_for("waterbirds").as_dict()
    assert field(at, "number_input", "epochs", "waterbirds").value == waterbirds["epochs"]
    assert field(at, "selectbox", "backbone", "waterbirds").value == waterbirds["backbone"]
    # waterbirds' recipe leaves the rule to the method's own mu + 2 sigma
    assert field(at, "selectbox", "threshold_rule", "waterbirds").value == "mean+2std"
    # ... and its finetune candidates: every fill and learning rate, trained epochs with val checks
    assert field(at, "multiselect", "finetune_fills", "waterbirds").value == list(
        waterbirds["finetune_fills"]
    )
    assert field(at, "number_input", "finetune_epochs", "waterbirds").value == waterbirds["finetune_epochs"]
    assert field(at, "number_input", "finetune_checks", "waterbirds").value == waterbirds["finetune_checks"]
    starts = field(at, "multiselect", "finetune_start", "waterbirds").value
    assert ",".join(starts) == waterbirds["finetune_start"] == "best"
    assert field(at, "number_input", "mask_dilation", "waterbirds").value == 0
    assert field(at, "number_input", "iterations", "waterbirds").value == waterbirds["iterations"] == 2
    assert "launch.waterbirds.data_dir" in [t.key for t in at.text_input]
    assert "launch.waterbirds.train_copies" not in [n.key for n in at.number_input]
    assert "launch.waterbirds.square_size" not in [n.key for n in at.number_input]
    assert any("Data not found" in w.value for w in at.warning)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("lr", 0.0, "lr: must be greater than 0"),
        ("epochs", 0, "epochs: must be at least 1, got 0"),
        ("nproc", 3, "batch_size: 128 does not split evenly among nproc=3 processes"),
    ],
)
def test_invalid_values_get_the_engines_message_and_create_no_run(
    empty_store: RunStore, spawned: list[list[str]], name: str, value: float, message: str
) -> None:
    at = open_launch()
    field(at, "number_input", name).set_value(value)
    launch(at)
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert empty_store.list() == [] and spawned == []


def test_missing_data_is_refused_before_a_run_exists(
    empty_store: RunStore, spawned: list[list[str]], tmp_path: Path
) -> None:
    at = open_launch()
    at.selectbox(key="launch.dataset").set_value("waterbirds").run()
    field(at, "text_input", "data_dir", "waterbirds").set_value(str(tmp_path)).run()  # exists, but empty
    launch(at)
    assert any("metadata.csv" in e.value for e in at.error), [e.value for e in at.error]
    assert empty_store.list() == [] and spawned == []


def test_valid_submit_queues_a_run_with_the_forms_values(
    empty_store: RunStore, spawned: list[list[str]]
) -> None:
    at = open_launch()
    field(at, "text_input", "name").set_value("tiny check")
    field(at, "number_input", "epochs").set_value(1)
    field(at, "number_input", "train_copies").set_value(0)
    field(at, "checkbox", "randmask").check()
    field(at, "number_input", "nproc").set_value(2)
    launch(at)
    runs = empty_store.list()
    assert len(runs) == 1
    config = runs[0].config()
    assert config["nproc"] == 2  # the job process starts torchrun with two processes
    assert (config["name"], config["epochs"], config["train_copies"], config["randmask"]) == (
        "tiny check",
        1,
        0,
        True,
    )
    assert config["lr"] == pytest.approx(0.01)  # the recipe's value, untouched
    assert runs[0].raw_status()["state"] == "queued"
    assert len(spawned) == 1 and runs[0].id in spawned[0]
    assert at.query_params["run"] == runs[0].id
    assert at.selectbox(key="job").value == runs[0].id  # the job panel follows the new run


def test_deep_link_reattaches_to_a_finished_job(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    at = open_launch(run.id)
    assert at.selectbox(key="job").value == run.id
    assert any(s.value.startswith("Done in") for s in at.success)
    links = {e.proto.label: e.proto for e in at.get("page_link")}
    assert links["Open results"].query_string == f"run={run.id}"


def test_queued_jobs_show_their_place_in_line(finished_store: RunStore) -> None:
    first = finished_store.list()[0]
    second = finished_store.create(first.config())
    # This test process stands in for both job processes, so both runs count as alive and queued.
    alive = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
    first.update_status(state="queued", stage=None, queued_at="2026-01-01T00:00:00+00:00", **alive)
    second.update_status(state="queued", stage=None, queued_at="2026-01-01T00:00:05+00:00", **alive)
    assert launch_form.queue_positions(finished_store.list()) == {first.id: 1, second.id: 2}
    at = open_launch(second.id)
    queue = at.dataframe[0].value
    assert list(queue["State"]) == ["queued · #1 in line", "queued · #2 in line"]
    assert any("#2 in line" in i.value for i in at.info)
    assert any(b.key == f"cancel_{second.id}" for b in at.button)


def test_a_failed_job_shows_its_error(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    run.update_status(state="failed", error="data: /nowhere is not a directory")
    at = open_launch(run.id)
    assert any("/nowhere is not a directory" in e.value for e in at.error)


def test_cancel_stops_the_job_process(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    # A stand-in job process in its own session, as jobs.submit starts them, so cancel signals its group.
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        run.update_status(state="running", stage="erm", pid=job.pid, pid_start=process_start_time(job.pid))
        at = open_launch(run.id)
        at.button(key=f"cancel_{run.id}").click().run()
        assert job.wait(timeout=10) == -signal.SIGTERM
        assert run.raw_status()["cancel_requested"] is True
    finally:
        job.kill()
        job.wait()
