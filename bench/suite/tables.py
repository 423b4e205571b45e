"""The suite's results as the page reads them (``collect``), and the helpers its tables share.

Runs are found by config (``runner.expected_config``), so the page shows runs of the product's current
defaults and nothing older. Seeds carry a role: "tuning" seeds may have been looked at to choose settings,
"held-out" seeds were not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.suite.generate import read_card
from bench.suite.results import MODELS, RunResult, mean_std, read_result
from bench.suite.runner import Job, expected_config, find_run
from masktune_core.runs import RunStore

ROLES = ("held-out", "tuning")
MODEL_LABELS = {"erm": "ERM", "masktune": "MaskTune"}
CLEAR_GAIN = 0.05  # the acceptance bar: MaskTune's mean worst-group test accuracy >= ERM's + 5 points
WG, ACC = "worst_group_accuracy", "accuracy"


@dataclass
class Suite:
    """Every (dataset, variant, seed) asked for, with its result or None when not run."""

    cards: dict[str, dict[str, Any]]  # dataset folder name -> card.json
    roles: dict[str, list[int]]  # role -> seeds
    variants: list[str]
    results: dict[tuple[str, str, int], RunResult | None]


def collect(
    data_folders: list[Path], runs_dir: Path, roles: dict[str, list[int]], variants: list[str]
) -> Suite:
    runs = RunStore(runs_dir).list()
    cards, results = {}, {}
    for folder in data_folders:
        card = read_card(folder)
        cards[folder.name] = card
        for variant in variants:
            for seeds in roles.values():
                for seed in seeds:
                    run = find_run(runs, expected_config(Job(folder, card["dataset"], variant, seed)))
                    results[(folder.name, variant, seed)] = None if run is None else read_result(run)
    return Suite(cards, roles, variants, results)


# ------------------------------------------------------------------------------------------ formatting
def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def spread(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` in percent (sample std), or the one value marked as one seed."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    shown = points(mean) if signed else pct(mean)
    return f"{shown} (one seed)" if std is None else f"{shown} ± {100 * std:.1f}"


def verdict_text(verdict: dict[str, Any] | None) -> str:
    """The run's own verdict, numbers as stored in metrics.json."""
    if not verdict:
        return "–"
    text = str(verdict.get("label", "?"))
    where = " on ".join(str(verdict[key]) for key in ("metric", "split") if verdict.get(key))
    extra = []
    if all(isinstance(verdict.get(model), (int, float)) for model in MODELS):
        extra.append(f"ERM {verdict['erm']:.3f}, MaskTune {verdict['masktune']:.3f}")
    if isinstance(verdict.get("difference"), (int, float)):
        extra.append(f"difference {verdict['difference']:+.3f}")
    interval = verdict.get("interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        extra.append(f"interval [{interval[0]:+.3f}, {interval[1]:+.3f}]")
    if where:
        extra.insert(0, where)
    return f"{text} ({', '.join(extra)})" if extra else text


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


# ------------------------------------------------------------------------------------------ sections
def seeds_done(suite: Suite, name: str, variant: str, seeds: list[int]) -> list[tuple[int, RunResult]]:
    pairs = [(seed, suite.results.get((name, variant, seed))) for seed in seeds]
    return [(seed, result) for seed, result in pairs if result is not None]


def scores_of(done: list[tuple[int, RunResult]], split: str, model: str, measure: str) -> list[float]:
    found = [result.score(split, model, measure) for _, result in done]
    return [value for value in found if value is not None]


def paired_diffs(done: list[tuple[int, RunResult]], split: str, measure: str) -> list[float]:
    """MaskTune - ERM per seed, for seeds that have both."""
    pairs = [(r.score(split, "masktune", measure), r.score(split, "erm", measure)) for _, r in done]
    return [masktune - erm for masktune, erm in pairs if masktune is not None and erm is not None]


def shown_variants(suite: Suite, seeds: list[int], names: list[str] | None = None) -> list[str]:
    """The variants a table of ``seeds`` shows: the first (the defaults, shown even where not run) and
    every other with at least one finished run among them, so a variant studied on other seeds alone
    adds no rows of "not run"."""
    names = list(suite.cards) if names is None else names
    return [
        variant
        for i, variant in enumerate(suite.variants)
        if i == 0 or any(suite.results.get((n, variant, s)) is not None for n in names for s in seeds)
    ]
