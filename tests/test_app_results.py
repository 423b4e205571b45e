"""The Results page (views/results.py) in AppTest: numbers equal metrics.json, comparison, exports."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from masktune_core.runs import Run, RunStore
from tests.apptest_pages import open_page

pytestmark = pytest.mark.usefixtures("fresh_caches")


def open_results(**params: str) -> AppTest:
    return open_page("results", **params)


def copy_run(store: RunStore, run: Run, new_id: str, name: str) -> Run:
    shutil.copytree(run.path, store.root / new_id, ignore=shutil.ignore_patterns(".lock"))
    copy = store.get(new_id)
    config = copy.config()
    config["name"] = name
    (copy.path / "config.json").write_text(json.dumps(config))
    return copy


def test_empty_store_explains_where_results_come_from(empty_store: RunStore) -> None:
    at = open_results()
    assert any("No finished run yet" in i.value for i in at.info)


def test_headline_cards_equal_metrics_json(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    split = metrics["main_test_split"]
    at = open_results(run=run.id)
    cards = {m.label: m.value for m in at.metric}
    for model, label in (("erm", "ERM"), ("masktune", "MaskTune"), ("randmask", "RandMask")):
        values = metrics["splits"][split][model]
        assert cards[f"{label} accuracy · {split}"] == f"{100 * values['accuracy']:.1f}%"
        assert (
            cards[f"{label} worst-group accuracy · {split}"] == f"{100 * values['worst_group_accuracy']:.1f}%"
        )


def test_the_header_names_the_finetune_candidates_and_the_masks(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    at = open_results(run=run.id)
    header = " ".join(c.value for c in at.caption)
    # TINY_RUN: learning rates 0.01 and 0.001 with biased-digits' one fill, one epoch, two val checks.
    assert "finetune lr 0.01, 0.001 × transplant, 1 epoch(s), 2 check(s) each" in header
    assert "xgradcam masks, topk" in header and "grown" not in header


def test_every_split_has_its_summary_with_the_three_averages(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    at = open_results(run=run.id)
    labels = [t.label for t in at.tabs]
    main = metrics["main_test_split"]
    assert labels[0] == f"{main} (main)"
    assert {label.removesuffix(" (main)") for label in labels} >= set(metrics["splits"])
    summaries = [d.value for d in at.dataframe if "Metric" in d.value.columns]
    assert len(summaries) == len(metrics["splits"])
    first = summaries[0].set_index("Metric")
    erm = metrics["splits"][main]["erm"]
    assert first.loc["Average: unweighted group mean", "ERM"] == pytest.approx(
        100 * erm["average_accuracy"]["group_mean"]
    )
    assert first.loc["Average: train-weighted", "ERM"] == pytest.approx(
        100 * erm["average_accuracy"]["train_weighted"]
    )
    delta = metrics["splits"][main]["masktune"]["accuracy"] - erm["accuracy"]
    assert first.loc["Accuracy", "Δ MaskTune − ERM"] == pytest.approx(100 * delta)
    definitions = "\n".join(c.value for c in at.caption)
    assert metrics["definitions"]["average_accuracy.train_weighted"] in definitions


def test_group_table_lists_every_group_and_names_the_worst(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    main = metrics["main_test_split"]
    at = open_results(run=run.id)
    groups = next(d.value for d in at.dataframe if "Group" in d.value.columns)
    assert set(groups["Group"]) == set(metrics["splits"][main]["erm"]["per_group"])
    worst = metrics["splits"][main]["erm"]["worst_group"]
    assert any(f"ERM: {worst}" in c.value for c in at.caption)


def test_exports_hold_every_number(finished_store: RunStore, downloads: dict[str, bytes]) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    open_results(run=run.id)
    assert json.loads(downloads[f"{run.id}-metrics.json"]) == metrics
    rows = list(csv.DictReader(io.StringIO(downloads[f"{run.id}-metrics.csv"].decode())))
    assert set(rows[0]) == {"split", "model", "metric", "value"}
    by_key = {(r["split"], r["model"], r["metric"]): float(r["value"]) for r in rows}
    main = metrics["main_test_split"]
    masktune = metrics["splits"][main]["masktune"]
    assert by_key[(main, "masktune", "accuracy")] == pytest.approx(masktune["accuracy"])
    group, values = next(iter(masktune["per_group"].items()))
    assert by_key[(main, "masktune", f"per_group.{group}.accuracy")] == pytest.approx(values["accuracy"])
    assert by_key[(main, "masktune", "average_accuracy.train_weighted")] == pytest.approx(
        masktune["average_accuracy"]["train_weighted"]
    )


def test_two_runs_side_by_side_from_the_url(finished_store: RunStore, downloads: dict[str, bytes]) -> None:
    first = finished_store.list()[0]
    second = copy_run(finished_store, first, "20990101-000000-copy", "copy")
    at = open_results(runs=f"{first.id},{second.id}")
    assert at.multiselect(key="results_runs").value == [first.id, second.id]
    assert "Comparison" in [h.value for h in at.header]
    table = next(d.value for d in at.dataframe if "Run" in d.value.columns)
    assert list(table["Run"]) == ["tiny", "copy"]
    split = first.metrics()["main_test_split"]
    expected = 100 * first.metrics()["splits"][split]["masktune"]["worst_group_accuracy"]
    assert table["MaskTune worst-group"].tolist() == pytest.approx([expected, expected])
    differences = next(d.value for d in at.dataframe if list(d.value.columns) == ["tiny", "copy"])
    assert list(differences.index) == ["name"]
    rows = list(csv.DictReader(io.StringIO(downloads["comparison-metrics.csv"].decode())))
    assert {r["run"] for r in rows} == {first.id, second.id}


def test_choosing_runs_writes_them_to_the_url(finished_store: RunStore) -> None:
    first = finished_store.list()[0]
    second = copy_run(finished_store, first, "20990101-000000-copy", "copy")
    at = open_results(run=first.id)
    assert at.multiselect(key="results_runs").value == [first.id]
    at.multiselect(key="results_runs").select(second.id).run()
    assert at.query_params["runs"] == f"{first.id},{second.id}"
    at.multiselect(key="results_runs").unselect(first.id).run()
    assert at.query_params["run"] == second.id and "runs" not in at.query_params


def test_a_run_that_is_not_done_is_not_offered(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    run.update_status(state="failed", error="boom")
    at = open_results(run=run.id)
    assert any("No finished run yet" in i.value for i in at.info)


def test_the_verdict_comes_first_and_every_candidate_is_shown(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    at = open_results(run=run.id)
    verdict = metrics["verdict"]
    shown = [*at.warning, *at.success, *at.info]
    assert any(f"Verdict (judged on val): {verdict['label']}" in box.value for box in shown)
    if verdict["kept_source"] or verdict["label"] == "hurt":
        assert any("Recommendation: use the ERM model" in box.value for box in at.warning)
    table = next(df.value for df in at.dataframe if "candidate" in df.value.columns)
    assert list(table["candidate"]) == [c["name"] for c in metrics["candidates"]]
    test = metrics["main_test_split"]
    for row, candidate in zip(table.to_dict("records"), metrics["candidates"], strict=True):
        assert row["kept"] == candidate["selected"]
        assert (row["fill"], row["kept epoch"]) == (
            candidate["settings"]["fill"],
            candidate["settings"]["kept_epoch"],
        )
        assert row[f"{test} worst-group"] == pytest.approx(
            round(100 * candidate["splits"][test]["worst_group_accuracy"], 1)
        )


def test_a_run_that_hurt_recommends_erm_in_a_warning(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    metrics["verdict"].update(label="hurt", text="MaskTune hurt: -9.0 points.", kept_source=False)
    (run.path / "metrics.json").write_text(json.dumps(metrics))
    at = open_results(run=run.id)
    assert "Verdict (judged on val): hurt" in at.warning[0].value
    assert "Recommendation: use the ERM model" in at.warning[0].value
