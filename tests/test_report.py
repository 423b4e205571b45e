"""The HTML report (masktune_core/report): every section of a finished run, the partial report of an
interrupted one, a seed study, the verdict when recorded, and bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from masktune_core.__main__ import main
from masktune_core.report.html import SECTIONS
from masktune_core.runs import Run, RunStore
from tests.test_app_studies import STUDY, make_study

SECTION_IDS = [key for key, _, _ in SECTIONS]
MAX_BYTES = 5_000_000


def report(store: RunStore, out: Path, *ids: str) -> str:
    assert main(["report", *ids, "--runs-dir", str(store.root), "--out", str(out)]) == 0
    return out.read_text()


def sections(html: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)">', html)


def test_a_finished_run_gets_every_section_in_order_offline(finished_store: RunStore, tmp_path: Path) -> None:
    run = finished_store.list()[0]
    out = tmp_path / "report.html"
    html = report(finished_store, out, run.id)
    assert sections(html) == SECTION_IDS
    for _, title, caption in SECTIONS:
        assert title in html and caption in html
    # Nothing that could make a request: no script, stylesheet link, remote or relative source, no url().
    assert not re.search(r"<script|<link|<iframe|@import|url\(|src=[\"'](?!data:)", html)
    images = re.findall(r"<img src='data:image/png;base64,", html)
    assert len(images) >= 12  # the gallery: at least 12 examples, each one PNG strip
    assert html.count("<svg") >= 5  # risk-coverage, accuracy-rejection, loss, val accuracy, stage times, ...
    assert out.stat().st_size < MAX_BYTES
    verdict = run.metrics()["verdict"]  # the tiny run records its verdict on val
    assert verdict["label"] in html and "One seed only" in html
    metrics = run.metrics()
    split = metrics["main_test_split"]
    acc = metrics["splits"][split]["masktune"]["accuracy"]
    assert f'data-key="{split}.masktune.accuracy" data-value="{acc!r}">{100 * acc:.1f} %' in html
    content = json.loads(out.with_suffix(".json").read_text())
    assert content["setup"]["runs"] == [run.id]
    assert (
        content["setup"]["command"].startswith("python -m masktune_core run")
        and "--seed 0" in content["setup"]["command"]
    )
    assert len(content["gallery"]["examples"]) >= 12 and "image" not in content["gallery"]["examples"][0]
    assert {p["split"] for p in content["selective"]["points"]} == {"val", split}


def test_a_recorded_verdict_and_its_candidates_are_shown(finished_store: RunStore, tmp_path: Path) -> None:
    run = finished_store.list()[0]
    metrics = run.metrics()
    metrics["verdict"] = {
        "label": "hurt",
        "metric": "worst_group_accuracy",
        "split": "val",
        "erm": 0.6,
        "masktune": 0.5,
        "difference": -0.1,
        "interval": [-0.15, -0.05],
        "confidence": 0.95,
        "resamples": 1000,
        "recommendation": "erm",
        "text": "MaskTune lowered val worst-group accuracy by 10 points.",
    }
    metrics["candidates"] = [
        {
            "name": "lr-1e-3",
            "settings": {"finetune_lr": 0.001},
            "selected": True,
            "splits": {"val": {"accuracy": 0.9, "worst_group_accuracy": 0.5}},
        },
        {
            "name": "lr-1e-2",
            "settings": {"finetune_lr": 0.01},
            "selected": False,
            "splits": {"val": {"accuracy": 0.8, "worst_group_accuracy": 0.4}},
        },
    ]
    (run.path / "metrics.json").write_text(json.dumps(metrics))
    html = report(finished_store, tmp_path / "r.html", run.id)
    assert "Verdict: MaskTune hurt" in html and "MaskTune lowered val worst-group accuracy" in html
    assert "1000 resamples" in html and "Recommended model: ERM" in html
    assert "lr-1e-3 (selected)" in html and "lr-1e-2" in html


def test_an_interrupted_run_gets_a_partial_report_with_its_notice(
    finished_store: RunStore, tmp_path: Path
) -> None:
    run = finished_store.list()[0]
    for path in ("metrics.json", "predictions", "masks", "checkpoints/masktune.pt"):
        target = run.path / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    run.update_status(state="interrupted", stage="masks_1", stages_done=["erm"], progress=0.4)
    html = report(finished_store, tmp_path / "partial.html", run.id)
    assert sections(html) == SECTION_IDS
    assert "this is a partial report" in html
    assert "is interrupted, not finished (stopped in stage &#x27;masks_1&#x27;)" in html
    assert "missing: the masks, the MaskTune model, the test numbers" in html
    assert "No test numbers yet" in html and "No gallery" in html and "No selective classification" in html


def test_a_seed_study_shows_spread_points_and_the_verdict_over_seeds(
    finished_store: RunStore, tmp_path: Path
) -> None:
    make_study(finished_store, finished_store.list()[0])
    html = report(finished_store, tmp_path / "study.html", STUDY)
    assert sections(html) == SECTION_IDS
    assert "seed study of 3 runs" in html and "one point per seed" in html
    assert "60.0 % ± 10.0" in html  # MaskTune worst-group accuracy over the seeds, sample std
    assert "95 % t-interval over seeds" in html and "--seeds 0,1,2" in html
    assert "One seed only" not in html


def bad(store: RunStore, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["report", *args, "--runs-dir", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_gets_one_line_and_no_file(
    finished_store: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = finished_store.list()[0]
    out = tmp_path / "r.html"
    assert "no run or study 'nope'" in bad(finished_store, capsys, "nope", "--out", str(out))
    assert "does not exist" in bad(
        finished_store, capsys, run.id, "--out", str(tmp_path / "missing" / "r.html")
    )
    other = finished_store.root / "20990101-000000-other"
    shutil.copytree(run.path, other, ignore=shutil.ignore_patterns(".lock"))
    config = json.loads((other / "config.json").read_text()) | {"dataset": "digits", "seed": 1}
    (other / "config.json").write_text(json.dumps(config))
    line = bad(finished_store, capsys, run.id, other.name, "--out", str(out))
    assert line.startswith("error: dataset:") and "one dataset" in line
    assert list(tmp_path.glob("*.html")) == [] and list(tmp_path.glob("*.json")) == []
    assert not list(Run(run.path).path.glob("*report*"))


def test_saved_threshold_sets_are_the_operating_points(finished_store: RunStore, tmp_path: Path) -> None:
    from masktune_core import selective

    run = finished_store.list()[0]
    for name, rule, per_class in (
        ("strict", "agreement", None),
        ("per-class", "softmax_masktune", [0.9, None]),
    ):
        thresholds = selective.Thresholds.build(2, 0.8, per_class=per_class)
        tset = selective.ThresholdSet(name=name, rule=rule, thresholds=thresholds, target_coverage=None)
        run.save_threshold_set(name, json.loads(tset.to_json()))
    run.save_threshold_set("broken", {"name": "broken"})
    out = tmp_path / "r.html"
    report(finished_store, out, run.id)
    content = json.loads(out.with_suffix(".json").read_text())["selective"]
    points = content["points"]
    split = run.metrics()["main_test_split"]
    assert {(p["name"], p["split"], p["on_curve"]) for p in points} == {
        ("strict", "val", True),
        ("strict", split, True),
        ("per-class", "val", False),
        ("per-class", split, False),
    }
    pred = run.predictions(split)
    scored = selective.score(
        "agreement", pred["probs_erm"], pred["probs_masktune"], pred["label"], pred["group"]
    )
    expected = selective.evaluate(scored, selective.Thresholds.build(2, 0.8))
    strict = next(p for p in points if p["name"] == "strict" and p["split"] == split)
    assert (
        strict["coverage"] == expected["coverage"] and strict["agreement_rate"] == expected["agreement_rate"]
    )
    html = out.read_text()
    assert "1 saved set(s) could not be read" in html and "they do not lie on these curves" in html
    # The legend's AURC is the full-range one, comparable across rules, not the curve's reachable-range one.
    aurc = content["curves"][split]["aurc"]
    assert aurc == selective.summarize(selective.rank(scored)).aurc
    assert f"{split} (AURC [0, 1] {aurc:.3f})" in html
