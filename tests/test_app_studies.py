"""Seed studies on the pages (AppTest): one Runs row per study, the Results study view, the one-seed note
and the report download."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from masktune_core.runs import Run, RunStore
from tests.apptest_pages import open_page

pytestmark = pytest.mark.usefixtures("fresh_caches")
STUDY = "study-20990101-000000-tiny"
MASKTUNE_WGA = (0.5, 0.6, 0.7)  # the main split's MaskTune worst-group accuracy, seed by seed


def make_study(store: RunStore, template: Run) -> list[Run]:
    """Three copies of the tiny run as seeds 0-2 of one study, each with its own worst-group number."""
    runs = []
    for seed, wga in enumerate(MASKTUNE_WGA):
        run_id = f"20990101-00000{seed}-tiny-seed-{seed}"
        shutil.copytree(template.path, store.root / run_id, ignore=shutil.ignore_patterns(".lock"))
        run = store.get(run_id)
        config = run.config() | {"study": STUDY, "seed": seed, "name": f"tiny · seed {seed}"}
        (run.path / "config.json").write_text(json.dumps(config))
        metrics = run.metrics()
        metrics["splits"][metrics["main_test_split"]]["masktune"]["worst_group_accuracy"] = wga
        (run.path / "metrics.json").write_text(json.dumps(metrics))
        runs.append(run)
    return runs


@pytest.fixture
def study_store(finished_store: RunStore) -> RunStore:
    make_study(finished_store, finished_store.list()[0])
    return finished_store


def test_runs_page_shows_a_study_as_one_row_that_expands_to_its_runs(study_store: RunStore) -> None:
    at = open_page("runs")
    table = at.dataframe[0].value
    assert len(table) == 2  # the single run, and the study
    row = table[table["name"].str.startswith(STUDY)].iloc[0]
    assert "3 seeds" in row["name"] and row["state"] == "done (3 seeds)"
    assert row["masktune_wga"] == pytest.approx(100 * sum(MASKTUNE_WGA) / 3)

    at = open_page("runs", run=STUDY)
    assert any(s.value == f"Seed study {STUDY}" for s in at.subheader)
    expander = next(e for e in at.expander if "runs of this study" in e.label)
    members = expander.dataframe[0].value
    assert list(members["Seed"]) == [0, 1, 2] and set(members["State"]) == {"done"}


def test_results_study_view_gives_mean_std_points_and_paired_difference(
    study_store: RunStore, downloads: dict[str, Any]
) -> None:
    at = open_page("results", study=STUDY)
    assert any(s.value == f"Seed study {STUDY}" for s in at.subheader)
    main = study_store.list()[0].metrics()["main_test_split"]
    table = at.dataframe[0].value.set_index("Metric")
    assert table.loc["Worst-group accuracy", "MaskTune"] == "60.0 ± 10.0 %"  # sample std of 50, 60, 70
    erm = 100 * study_store.list()[0].metrics()["splits"][main]["erm"]["worst_group_accuracy"]
    paired = table.loc["Worst-group accuracy", "MaskTune − ERM (paired)"]
    assert paired.startswith(f"{60 - erm:+.1f} pp") and "[" in paired  # with its t-interval
    strips = [c for c in at.get("plotly_chart")]
    assert strips, "no per-seed chart"
    figure = json.loads(strips[1].proto.spec)
    points = [t for t in figure["data"] if t["name"].startswith("MaskTune (one point")]
    assert len(points[0]["y"]) == 3  # one point per seed (plotly may encode the array)
    assert any("sample standard deviation" in c.value for c in at.caption)
    assert f"{STUDY}-report.html" in downloads


def test_single_run_results_say_they_are_one_seed(
    finished_store: RunStore, downloads: dict[str, Any]
) -> None:
    run = finished_store.list()[0]
    at = open_page("results", run=run.id)
    assert any("One seed (seed 0)" in i.value for i in at.info)
    html = downloads[f"{run.id}-report.html"]()  # the report is built on the click
    assert b"MaskTune report" in html and b"One seed only" in html


def test_launch_seeds_field_queues_one_run_per_seed_as_one_study(
    empty_store: RunStore, spawned: list[list[str]]
) -> None:
    at = open_page("launch")
    at.text_input(key="launch.biased-digits.name").set_value("trio")
    at.number_input(key="launch.biased-digits.epochs").set_value(1)
    at.text_input(key="launch.biased-digits.seeds").set_value("0,1,x")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert any("Seeds (a seed study)" in e.value and "seeds:" in e.value for e in at.error)
    assert empty_store.list() == [] and spawned == []

    at.text_input(key="launch.biased-digits.seeds").set_value("0, 1, 2")
    next(b for b in at.button if b.label == "Launch").click().run()
    runs = empty_store.list()
    configs = [run.config() for run in runs]
    assert sorted(c["seed"] for c in configs) == [0, 1, 2] and len(spawned) == 3
    assert len({c["study"] for c in configs}) == 1 and configs[0]["study"].startswith("study-")
    assert {c["epochs"] for c in configs} == {1}
