"""``python -m masktune_core selective``: fit on val, report on test, save a set the pages can load."""

from __future__ import annotations

import json

import pytest

from masktune_core import selective
from masktune_core.__main__ import main
from masktune_core.runs import RunStore
from studio import inference


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["selective", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_guaranteed_fit_reports_on_test_and_saves_a_loadable_set(
    finished_store: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    run = finished_store.list()[0]
    code, out, _ = run_cli(
        capsys, run.id, "--rule", "agreement", "--target-risk", "0.05", "--delta", "0.05", "--json"
    )
    assert code == 0
    result = json.loads(out)
    preds = run.predictions("val")
    scored = selective.score(
        "agreement", preds["probs_erm"], preds["probs_masktune"], preds["label"], preds["group"]
    )
    fit = selective.fit_risk(selective.rank(scored), 0.05, 0.05)
    assert result["thresholds"]["global_threshold"] == fit.thresholds.global_threshold
    assert result["val"]["risk_upper_bound"] == fit.val_bound
    assert result["test"]["split"] == run.metrics()["main_test_split"]
    assert {"coverage", "selective_risk", "target_held", "aurc", "augrc", "aurc_95ci"} <= set(result["test"])

    saved = run.threshold_sets()[result["threshold_set"]]
    assert saved["run_id"] == run.id and saved["fitted_on"] == "val"
    assert saved["fit"]["target"] == "guaranteed_risk" and saved["fit"]["delta"] == 0.05
    sets, problems = inference.saved_threshold_sets(run, 2)  # what "Try an image" loads
    assert not problems and [s.name for s in sets] == [result["threshold_set"]]
    assert sets[0].thresholds == fit.thresholds


def test_per_class_text_output(finished_store: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    run = finished_store.list()[0]
    code, out, _ = run_cli(capsys, run.id, "--target-risk", "0.1", "--per-class", "--name", "pc")
    assert code == 0 and "fitted on val (per_class" in out and "saved threshold set 'pc'" in out
    assert all(t is not None for t in run.threshold_sets()["pc"]["per_class"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-risk", "0"], "--target-risk: must lie in (0, 1)"),
        (["--target-risk", "1.5"], "--target-risk: must lie in (0, 1)"),
        (["--target-risk", "abc"], "--target-risk: expected a number"),
        (["--target-risk", "0.1", "--delta", "1"], "--delta: must lie in (0, 1)"),
        (["--target-risk", "0.1", "--rule", "vote"], "--rule: invalid choice"),
        (["--target-risk", "0.1", "--per-class", "--per-group"], "not allowed with"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    finished_store: RunStore, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    run = finished_store.list()[0]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, run.id, *args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert run.threshold_sets() == {}


def test_a_run_without_predictions_is_refused(
    finished_store: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    run = finished_store.list()[0]
    run.predictions_path("val").unlink()
    code, _, err = run_cli(capsys, run.id, "--target-risk", "0.1")
    assert code == 2 and err.strip() == (
        f"error: predictions: run {run.id} has no saved predictions of both models on 'val'"
    )
    assert run.threshold_sets() == {}
