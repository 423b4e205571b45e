"""bench/reproduce: its pieces on hand-made inputs, and one --quick run that must write a well-formed page.

No test asserts an accuracy: the page reports whatever the product measures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.reproduce import analysis, claims, cost, markdown, sections_selective, stats
from bench.reproduce import grid as study
from masktune_core import selective as sel
from masktune_core.config import RunConfig
from masktune_core.recipes import RECIPE_KEYS

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- formatting
def test_fmt_shows_mean_and_std_over_seeds_and_the_value_alone_for_one_seed() -> None:
    assert stats.fmt(stats.stat([0.5, 0.7, 0.6])) == "60.0 ± 10.0"
    assert stats.fmt(stats.stat([0.25])) == "25.0"
    assert stats.fmt(stats.stat([None, None])) == "–"
    assert stats.fmt(stats.stat([12.0, 14.0]), scale=1.0) == "13.0 ± 1.4"
    assert stats.fmt(stats.stat([0.021, 0.025]), signed=True) == "+2.3 ± 0.3"
    assert stats.fmt(stats.stat([-0.5]), signed=True) == "-50.0"
    # An undefined seed is left out and said, never read as 0.
    assert stats.fmt(stats.stat([0.5, None, 0.7])) == "60.0 ± 14.1 (2 of 3 seeds defined)"
    assert stats.fmt(stats.stat([None]), undefined="undefined") == "undefined"


def test_verdict_needs_every_seed_for_reproduced() -> None:
    assert stats.verdict(3, 3) == "reproduced"
    assert stats.verdict(3, 3, strong=False) == "partly reproduced"
    assert stats.verdict(2, 3) == "partly reproduced"
    assert stats.verdict(1, 3) == "not reproduced"
    assert stats.verdict(0, 1) == "not reproduced"


def test_markdown_table_has_one_cell_per_header_column() -> None:
    text = markdown.table(["a", "b", "c"], [["x", "1", "2"]])
    lines = text.splitlines()
    assert lines[1] == "|---|---:|---:|"
    assert all(line.count("|") == 4 for line in lines)


# ------------------------------------------------------------------------------------------ selective
def _arrays(seed: int, n: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[labels]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    flipped = probs[:, ::-1].copy() if seed else probs
    return {
        "label": labels,
        "group": labels % 2,
        "probs_erm": probs,
        "probs_masktune_1": np.where(rng.random((n, 1)) < 0.8, probs, flipped),
    }


def test_analyse_rule_fits_on_val_and_reports_on_test_for_every_target() -> None:
    rule = next(r for r in analysis.SELECTIVE_RULES if r.per_class)
    outcome = analysis.analyse_rule(rule, _arrays(0), _arrays(1), "masktune_1")
    assert [row["target_coverage"] for row in outcome.table] == list(analysis.TARGETS)
    assert len(outcome.group_points) == len(analysis.TARGETS)
    assert set(outcome.group_curves) == {0, 1}
    # The agreement rule never accepts more than the samples both models agree on.
    assert all(row["test_coverage"] <= outcome.agreement_rate + 1e-12 for row in outcome.table)
    # Its weights are the engine's, fitted on val, and its test ranking uses them.
    val = sel.score("agreement", *(_arrays(0)[k] for k in ("probs_erm", "probs_masktune_1", "label")))
    assert outcome.ranking.weights.tolist() == sel.fit_class_weights(val).tolist()


def test_every_rule_is_summarised_on_the_range_all_rules_reach() -> None:
    outcome = analysis.analyse_rules(_arrays(0), _arrays(1), "masktune_1")
    common = sel.common_coverage([o.ranking for o in outcome.values()])
    # The agreement rules stop at the agreement rate, so that is the common range here.
    assert common == pytest.approx(outcome["agreement"].agreement_rate)
    assert 0 < common < 1
    for o in outcome.values():
        assert o.summary == sel.summarize(o.ranking, common)
        assert o.summary.aurc_common is not None


def _undefined(outcome: dict[str, analysis.RuleOutcome], key: str) -> dict[str, analysis.RuleOutcome]:
    """``outcome`` with rule ``key`` accepting no test sample: its AURCs are undefined."""
    nothing = replace(outcome[key].summary, aurc=None, aurc_common=None, max_coverage=0.0)
    return {**outcome, key: replace(outcome[key], summary=nothing)}


def test_an_undefined_aurc_is_shown_as_undefined_and_leaves_the_claim_unjudged() -> None:
    outcome = analysis.analyse_rules(_arrays(0), _arrays(1), "masktune_1")
    broken = _undefined(outcome, "product")
    per_seed = [(None, outcome), (None, broken)]

    verdicts = {
        subject: (word, text) for word, subject, text in claims.claim_selective({"d": per_seed}).verdicts
    }
    word, text = verdicts["d: Product rule (reference code)"]
    assert word == claims.UNJUDGED
    assert "Undefined in 1 of 2 seeds" in text and "lower in" in text and "of 1 seeds" in text
    assert verdicts["d: Agreement + per-class thresholds"][0] != claims.UNJUDGED

    lines = "\n".join(sections_selective.aurc_table({"d": per_seed})).splitlines()
    product = next(line for line in lines if line.startswith("| Product rule"))
    cells = [c.strip() for c in product.strip("|").split("|")]
    full = outcome["product"].summary.aurc
    assert cells[1] == f"{100 * full:.3f} (1 of 2 seeds defined)"
    assert cells[3].endswith("(1 of 2 seeds defined)")
    alone = "\n".join(sections_selective.aurc_table({"d": [(None, broken)]})).splitlines()
    assert "| Product rule (reference code) | – | 0.0 | – |" in alone
    assert not any("0.000" in line for line in alone if line.startswith("| Product"))


# ----------------------------------------------------------------------------------------------- grid
def test_every_run_keeps_its_dataset_recipe_and_ablations_start_from_their_seeds_erm() -> None:
    grid = study.Grid(
        {"biased-digits": (0, 1), "biased-fashion-mnist": (0,)},
        {"digits": (0,)},
        (0, 1),
        {},
    )
    jobs = study.make_jobs(grid)
    names = [job.name for job in jobs]
    assert len(names) == len(set(names))
    for job in jobs:
        values = {"dataset": job.dataset}
        if job.study == "shortcut":  # the paper's fill and two iterations, whatever the demo recipe uses
            values["finetune_fills"] = study.SHORTCUT_SWITCHES["finetune_fills"]
            values["iterations"] = study.SHORTCUT_SWITCHES["iterations"]
        if job.study == "ablation":  # an ablation changes its own options only, which may be recipe keys
            values.update(study.ABLATIONS[job.variant][1])
        recipe = RunConfig.from_dict(values).resolved().to_dict()
        assert {k: job.config[k] for k in RECIPE_KEYS} == {k: recipe[k] for k in RECIPE_KEYS}
        assert job.config["seed"] == job.seed
    ablations = [job for job in jobs if job.study == "ablation"]
    assert len(ablations) == 2 * len(study.ABLATIONS)
    for job in ablations:
        source = next(j for j in jobs if j.name == job.erm_from)
        assert names.index(source.name) < names.index(job.name)
        assert (source.study, source.dataset, source.seed) == ("shortcut", study.ABLATION_DATASET, job.seed)
        assert job.config["iterations"] == 1


def test_quick_grid_applies_its_override_to_every_run() -> None:
    jobs = study.make_jobs(study.quick_grid())
    assert {job.dataset for job in jobs} == {*study.QUICK_SHORTCUT, *study.QUICK_SELECTIVE}
    for job in jobs:
        assert {k: job.config[k] for k in study.QUICK_OVERRIDES} == study.QUICK_OVERRIDES


def test_full_grid_drops_seeds_of_the_large_datasets_only_when_over_budget() -> None:
    def sizes(train_large: int):
        def sizes_of(grid):
            return {
                d: {"train": train_large if d in study.LARGE_DATASETS else 1000, "val": 100, "test": 100}
                for d in grid.datasets()
            }

        return sizes_of

    grid, notes = cost.full_grid(sizes(1000))
    assert notes == []
    assert all(seeds == study.SEEDS for seeds in (*grid.shortcut.values(), *grid.selective.values()))

    grid, notes = cost.full_grid(sizes(10_000_000))
    seeds = {**grid.shortcut, **grid.selective}
    assert all(seeds[d] == study.SEEDS[:1] for d in study.LARGE_DATASETS)
    assert all(seeds[d] == study.SEEDS for d in seeds if d not in study.LARGE_DATASETS)
    assert len(notes) == len(study.LARGE_DATASETS)


def test_reusing_erm_makes_a_run_cheaper_in_the_estimate() -> None:
    config = study.make_config("biased-digits", 0, {"iterations": 1}, {}, "x")
    sizes = {"train": 9621, "val": 1701, "test_original": 539, "test_biased": 539}
    reused, fresh = (cost.estimate_run_seconds(config, sizes, erm_reused) for erm_reused in (True, False))
    assert 0 < reused < fresh


# ------------------------------------------------------------------------------------------ the page
SECTIONS = [
    "# Reproducing MaskTune's claims",
    "## Summary",
    "## Definitions",
    "## 1. Spurious shortcut study",
    "### biased-digits: accuracy (%)",
    "### Ablation on biased-digits: threshold rule and fill",
    "### Wall time per stage (seconds)",
    "## 2. Selective classification",
    "### digits: operating points fitted on val, reported on test",
    "### AURC on test (lower is better)",
    "### Per-group selection on the shortcut datasets",
    "## Claims, plainly",
    "### Claim 1:",
    "### Claim 2:",
    "### Claim 3:",
    "## Deviations and limits",
]
TABLE_HEADERS = [
    "| method | test_original | test_biased | worst-group (test_biased) | Paper (quoted), test_biased |",
    "| variant | test_original | test_biased | worst-group |",
    "| runs | n | data | erm |",
    "| rule | target coverage | val coverage (%) | test coverage (%) | test selective error (%) |",
    "| rule | digits: AURC [0, 1] (%) | largest coverage (%) | AURC [0, a] (%) |",
    "| rule | target | 0-4 / no square | 5-9 / square | gap (points) |",
]


def _tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return [*tables, current] if current else tables


@pytest.mark.slow
def test_quick_run_writes_a_well_formed_page(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    # One thread: on a machine shared with other tests, two PyTorch threads mostly wait on each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.reproduce", "--quick", "--out", str(out), "--runs-dir", str(runs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = out / "results.md"
    text = page.read_text()

    for heading in SECTIONS:
        assert any(line.startswith(heading) for line in text.splitlines()), heading
    for header in TABLE_HEADERS:
        assert header in text, header
    for rows in _tables(text):
        columns = rows[0].count("|")
        assert all(row.count("|") == columns for row in rows), rows[0]
        assert re.fullmatch(r"\|(-{3}:?\|)+", rows[1]), rows[1]
        assert len(rows) > 2, rows[0]

    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(figures) == 3
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure

    assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE)
    assert not re.search(r"\bNone\b", text)
    assert "Paper (quoted)" in text
    assert "Quick mode: a smoke test, not results." in text
    assert "thresholds and per-class tolerance weights are fitted on val and reported on test" in text
    assert f"-m bench.reproduce --quick --out {out}" in text
    # Every claim gets a generated verdict, whatever it is.
    verdict = r"^- \*\*(reproduced|partly reproduced|not reproduced|not testable|cannot be judged)\*\*:"
    verdicts = re.findall(verdict, text, re.MULTILINE)
    assert len(verdicts) >= 3
    # The runs asked to be kept stay, and no temporary file is left beside the page.
    assert len([p for p in runs.iterdir() if (p / "config.json").is_file()]) == len(
        study.make_jobs(study.quick_grid())
    )
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
