"""The Selective page's tables and notes, as plain rows and sentences (the page only lays them out)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from masktune_core import selective
from studio import common

PERCENT = st.column_config.NumberColumn(format="%.1f%%")
METRIC_DEFINITIONS = {
    "AURC [0, 1]": "area under the risk–coverage curve over all coverages; past the largest coverage "
    "the rule reaches, the risk stays what it was there (the rule accepts nothing more). Tied "
    "confidences count as one block.",
    "AURC [0, a]": "mean selective risk over the coverage range [0, a] that every rule reaches (a = the "
    "smallest of the rules' largest coverages).",
    "AUGRC": "area under the generalized risk–coverage curve (Traub et al., 2024): the mean share of all "
    "samples that are accepted and wrong, i.e. undetected failures.",
    "E-AURC": "AURC [0, 1] minus that of a perfect ranking of the same accepted samples (0 = the confidence "
    "orders every right answer above every wrong one).",
}


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _interval(interval: selective.Interval, digits: int = 2) -> str:
    if interval.low is None:
        return "undefined"
    return f"{100 * interval.low:.{digits}f}–{100 * interval.high:.{digits}f}"


def interval_caption(intervals: dict[str, selective.Interval]) -> str:
    """One line of 95% intervals for the test panel's numbers."""
    names = {
        "accuracy_on_accepted": "accuracy on accepted",
        "selective_risk": "selective risk",
        "coverage": "coverage",
        "worst_group_accuracy_on_accepted": "worst-group accuracy",
    }
    parts = [f"{label} {_interval(intervals[key], 1)}%" for key, label in names.items() if key in intervals]
    first = next(iter(intervals.values()))
    return (
        f"95% bootstrap intervals ({first.resamples:,} resamples, seed {first.seed}): "
        + "; ".join(parts)
        + "."
    )


def rule_rows(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per rule: the curve summaries on the test split with their 95% intervals (in %)."""
    rows = []
    for rule, entry in summaries.items():
        s, ci = entry["summary"], entry["intervals"]
        rows.append(
            {
                "rule": selective.RULES[rule].label,
                "largest coverage": _pct(s.max_coverage),
                "AURC [0, 1]": _pct(s.aurc),
                "95% CI": _interval(ci["aurc"]),
                "AURC [0, a]": _pct(s.aurc_common),
                "95% CI ": _interval(ci["aurc_common"]) if "aurc_common" in ci else "undefined",
                "AUGRC": _pct(s.augrc),
                "95% CI  ": _interval(ci["augrc"]),
                "E-AURC": _pct(s.eaurc),
            }
        )
    return rows


def rule_columns() -> dict[str, Any]:
    fmt = st.column_config.NumberColumn
    return {
        "largest coverage": PERCENT,
        **{name: fmt(format="%.2f%%", help=text) for name, text in METRIC_DEFINITIONS.items()},
    }


def per_class_rows(
    class_names: list[str], thresholds: selective.Thresholds, results: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for c, name in enumerate(class_names):
        row: dict[str, Any] = {"class": name, "τ = t × w": float(thresholds.tau[c])}
        for split, res in results.items():
            stats = res["per_class"][c]
            row[f"{split} n"] = stats["n"]
            row[f"{split} coverage"] = _pct(stats["coverage"])
            row[f"{split} accuracy on accepted"] = _pct(stats["accuracy_on_accepted"])
        rows.append(row)
    return rows


def per_class_columns(splits: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {"τ = t × w": st.column_config.NumberColumn(format="%.3f")}
    for split in splits:
        config[f"{split} coverage"] = st.column_config.ProgressColumn(
            min_value=0, max_value=100, format="%.1f%%"
        )
        config[f"{split} accuracy on accepted"] = PERCENT
    return config


def coverage_rows(
    val: selective.Ranking, test: selective.Scored, test_split: str, targets: list[float]
) -> list[dict[str, Any]]:
    """The coverage table: fitted on val, reported on test with a 95% interval of the selective risk."""
    rows = []
    for row in selective.coverage_table(val, test, targets):
        thresholds = selective.Thresholds.build(test.num_classes, row["threshold"], weights=val.weights)
        risk_ci = selective.bootstrap_point(test, thresholds)["selective_risk"]
        rows.append(
            {
                "target coverage": 100 * row["target_coverage"],
                "t (fitted on val)": row["threshold"],
                "val coverage": 100 * row["val_coverage"],
                f"{test_split} coverage": 100 * row["test_coverage"],
                f"{test_split} accuracy on accepted": _pct(row["test_accuracy_on_accepted"]),
                f"{test_split} selective risk": _pct(row["test_selective_risk"]),
                "95% CI of the risk": _interval(risk_ci, 1),
                "reachable on val": row["reachable"],
            }
        )
    return rows


def coverage_columns(test_split: str) -> dict[str, Any]:
    return {
        "target coverage": st.column_config.NumberColumn(format="%.0f%%"),
        "t (fitted on val)": st.column_config.NumberColumn(format="%.4f"),
        "val coverage": PERCENT,
        f"{test_split} coverage": PERCENT,
        f"{test_split} accuracy on accepted": PERCENT,
        f"{test_split} selective risk": PERCENT,
    }


def shortcut_notes(
    split: str, rule: str, result: dict[str, Any], reference: dict[str, Any], scored: selective.Scored
) -> list[str]:
    """What the numbers on ``split`` say about a shared shortcut, in plain sentences (none when nothing)."""
    notes = []
    accepted_acc, full_acc = result["accuracy_on_accepted"], reference["accuracy_on_accepted"]
    if accepted_acc is not None and accepted_acc < full_acc:
        notes.append(
            f"On **{split}**, accuracy on the accepted samples ({common.pct(accepted_acc)}) is *below* "
            f"accuracy at full coverage ({common.pct(full_acc)}): this rule's confidence points at the "
            "wrong answers here, so rejecting more makes things worse."
        )
    agree = scored.agree
    if agree.any():
        # Where the two models agree, the agreed class is the MaskTune argmax, which every rule scores.
        wrong_share = (
            float((~scored.correct[agree]).mean()) if rule in ("agreement", "softmax_masktune") else None
        )
        if wrong_share is not None and wrong_share > 0.5:
            notes.append(
                f"On **{split}**, the two models agree on {common.pct(float(agree.mean()))} of the samples, "
                f"and {common.pct(wrong_share)} of those agreements are wrong: both models share a shortcut "
                "here (on a biased split, the spurious feature points the wrong way), so agreement is no "
                "evidence of a right answer."
            )
    return notes
