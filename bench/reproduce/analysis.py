"""A finished run's results, and the selective study on its saved predictions: fit on val, report on test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bench.reproduce.grid import Job
from masktune_core import selective as sel
from masktune_core.runs import Run

TARGETS = sel.DEFAULT_TARGETS


@dataclass(frozen=True)
class SelectiveRule:
    """A selective rule as the study uses it; ``per_class`` fits tolerance weights on val."""

    key: str
    label: str
    rule: str
    per_class: bool = False


SELECTIVE_RULES = (
    SelectiveRule("softmax_erm", "Softmax response, ERM alone", "softmax_erm"),
    SelectiveRule("softmax_masktune", "Softmax response, MaskTune alone", "softmax_masktune"),
    SelectiveRule("product", "Product rule (reference code)", "product"),
    SelectiveRule("agreement_global", "Agreement, one global threshold", "agreement"),
    SelectiveRule("agreement", "Agreement + per-class thresholds", "agreement", per_class=True),
)


COMBINED_RULES = ("product", "agreement")


SINGLE_RULES = ("softmax_erm", "softmax_masktune")


GROUP_RULES = ("agreement", "softmax_erm")


@dataclass
class Result:
    job: Job
    run: Run
    metrics: dict[str, Any]
    timings: dict[str, float]
    mask_area: dict[str, float]

    @classmethod
    def load(cls, job: Job, run: Run) -> Result:
        events = run.events()
        metrics = run.metrics()
        if not isinstance(metrics, dict):
            raise SystemExit(f"run {run.id} ({job.name}) has no readable metrics.json")
        return cls(
            job,
            run,
            metrics,
            {e["stage"]: float(e["seconds"]) for e in events if e.get("kind") == "timing"},
            {e["stage"]: float(e["mean_area"]) for e in events if e.get("kind") == "masks"},
        )

    def accuracy(self, split: str, model: str, key: str = "accuracy") -> float | None:
        return self.metrics["splits"][split][model][key]

    def predictions(self, split: str) -> dict[str, np.ndarray]:
        arrays = self.run.predictions(split)
        if arrays is None:
            raise SystemExit(f"run {self.run.id} has no readable predictions for {split}")
        return arrays


def select(results: Sequence[Result], study: str, dataset: str, variant: str = "main") -> list[Result]:
    found = [r for r in results if (r.job.study, r.job.dataset, r.job.variant) == (study, dataset, variant)]
    return sorted(found, key=lambda r: r.job.seed)


@dataclass
class RuleOutcome:
    """One rule on one run: the val-fitted coverage table on test, full test curves, per-group points, and
    the engine's summary of the test ranking (full-range AURC, and from :func:`analyse_selective` the AURC
    on the range every rule reaches)."""

    table: list[dict[str, Any]]
    ranking: sel.Ranking
    summary: sel.Summary
    curve: sel.Curve
    group_curves: dict[int, sel.Curve]
    group_points: list[dict[str, Any]]
    agreement_rate: float


def analyse_rule(
    rule: SelectiveRule, val: dict[str, np.ndarray], test: dict[str, np.ndarray], masktune: str
) -> RuleOutcome:
    """Fit on ``val``, report on ``test`` (saved prediction arrays); ``masktune`` names the MaskTune model."""

    def scored(arrays: dict[str, np.ndarray]) -> sel.Scored:
        return sel.score(
            rule.rule, arrays["probs_erm"], arrays[f"probs_{masktune}"], arrays["label"], arrays.get("group")
        )

    scored_val, scored_test = scored(val), scored(test)
    weights = sel.fit_class_weights(scored_val) if rule.per_class else None
    ranking_val = sel.rank(scored_val, weights)
    table = sel.coverage_table(ranking_val, scored_test, TARGETS)
    ranking_test = sel.rank(scored_test, weights)
    full = scored_test.n + 1
    group_points = []
    if scored_test.groups is not None:
        for row in table:
            thresholds = sel.Thresholds.build(
                scored_test.num_classes, row["threshold"], weights=ranking_val.weights
            )
            group_points.append(sel.evaluate(scored_test, thresholds)["per_group"])
    return RuleOutcome(
        table,
        ranking_test,
        sel.summarize(ranking_test),
        sel.risk_coverage(ranking_test, max_points=full),
        sel.risk_coverage_by(ranking_test, "group", max_points=full),
        group_points,
        float(scored_test.agree.mean()),
    )


def analyse_selective(result: Result, test_split: str, masktune: str) -> dict[str, RuleOutcome]:
    return analyse_rules(result.predictions("val"), result.predictions(test_split), masktune)


def analyse_rules(
    val: dict[str, np.ndarray], test: dict[str, np.ndarray], masktune: str
) -> dict[str, RuleOutcome]:
    """Every rule on one run; each summary also holds the AURC on the common range [0, a], a being the
    largest test coverage every rule reaches (undefined when one of them accepts nothing)."""
    outcome = {rule.key: analyse_rule(rule, val, test, masktune) for rule in SELECTIVE_RULES}
    common = sel.common_coverage([o.ranking for o in outcome.values()])
    if common == 0:
        return outcome
    return {k: replace(o, summary=sel.summarize(o.ranking, common)) for k, o in outcome.items()}


Outcomes = dict[str, list[tuple[Result, dict[str, RuleOutcome]]]]  # dataset -> per seed


def group_gap(points: dict[int, dict[str, Any]]) -> float | None:
    accuracies = [p["accuracy_on_accepted"] for p in points.values() if p["accuracy_on_accepted"] is not None]
    return max(accuracies) - min(accuracies) if len(accuracies) > 1 else None
