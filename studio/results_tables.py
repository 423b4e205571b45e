"""The Results page's tables and their data: per-split summaries, per-group and per-class tables, CSV.

Pure data helpers (``flatten``, ``metrics_csv``) sit beside the widgets that show them, so the page script
keeps layout only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pandas as pd
import streamlit as st

from studio import charts

SUMMARY_ROWS = (
    # (label, path in a model's metrics, key in metrics["definitions"])
    ("Accuracy", ("accuracy",), "accuracy"),
    ("Worst-group accuracy", ("worst_group_accuracy",), "worst_group_accuracy"),
    ("Average: plain mean", ("average_accuracy", "plain"), "average_accuracy.plain"),
    ("Average: unweighted group mean", ("average_accuracy", "group_mean"), "average_accuracy.group_mean"),
    ("Average: train-weighted", ("average_accuracy", "train_weighted"), "average_accuracy.train_weighted"),
)
PERCENT = "%.1f%%"
DELTA = "%+.1f pp"


# ---------------------------------------------------------------------- data helpers
def get(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(values, dict):
            return None
        values = values.get(part)
    return values


def models_of(metrics: dict[str, Any]) -> list[str]:
    present = {model for split in metrics.get("splits", {}).values() for model in split}
    return [m for m in charts.MODEL_ORDER if m in present]


def split_order(metrics: dict[str, Any]) -> list[str]:
    """Main test split first, then the other test splits, validation last."""
    splits = list(metrics.get("splits", {}))
    main = metrics.get("main_test_split")
    rest = [s for s in splits if s not in (main, "val")]
    return [s for s in (main, *rest, "val") if s in splits]


def as_pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def flatten(metrics: dict[str, Any]) -> Iterator[tuple[str, str, str, float]]:
    """(split, model, metric, value) for every number in metrics.json; nested keys joined with '.'."""

    def walk(value: Any, prefix: str) -> Iterator[tuple[str, float]]:
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from walk(inner, f"{prefix}.{key}" if prefix else key)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield prefix, value

    for split, models in metrics.get("splits", {}).items():
        for model, values in models.items():
            for metric, value in walk(values, ""):
                yield split, model, metric, value


def metrics_csv(named: dict[str, dict[str, Any]]) -> bytes:
    """One CSV of every number, long format; a ``run`` column when several runs are exported together."""
    rows = [
        {"run": run_id, "split": split, "model": model, "metric": metric, "value": value}
        for run_id, metrics in named.items()
        for split, model, metric, value in flatten(metrics)
    ]
    frame = pd.DataFrame(rows, columns=["run", "split", "model", "metric", "value"])
    if len(named) == 1:
        frame = frame.drop(columns="run")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


# ---------------------------------------------------------------------- one split
def summary_table(split_metrics: dict[str, Any], models: list[str], definitions: dict[str, str]) -> None:
    rows, notes = [], []
    for label, path, definition in SUMMARY_ROWS:
        values = {m: get(split_metrics.get(m, {}), path) for m in models}
        if all(v is None for v in values.values()):
            continue
        row = {"Metric": label, **{charts.model_label(m): as_pct(v) for m, v in values.items()}}
        if "erm" in values and "masktune" in values and None not in (values["erm"], values["masktune"]):
            row["Δ MaskTune − ERM"] = 100 * (values["masktune"] - values["erm"])
        rows.append(row)
        if definitions.get(definition):
            notes.append(f"**{label}**: {definitions[definition]}")
    frame = pd.DataFrame(rows)
    column_config: dict[str, Any] = {
        charts.model_label(m): st.column_config.NumberColumn(format=PERCENT) for m in models
    }
    column_config["Δ MaskTune − ERM"] = st.column_config.NumberColumn(
        format=DELTA, help="Percentage points; positive means MaskTune is better."
    )
    st.dataframe(frame, hide_index=True, column_config=column_config, width="content")
    st.caption("  \n".join(notes))


def group_table(split_metrics: dict[str, Any], models: list[str]) -> None:
    groups = list(split_metrics.get(models[0], {}).get("per_group", {}))
    if not groups:
        return
    frame = pd.DataFrame(
        {
            "Group": groups,
            "n": [split_metrics[models[0]]["per_group"][g]["n"] for g in groups],
            **{
                charts.model_label(m): [
                    as_pct(get(split_metrics.get(m, {}), ("per_group", g, "accuracy"))) for g in groups
                ]
                for m in models
            },
        }
    )
    labels = [charts.model_label(m) for m in models]

    def worst(column: pd.Series) -> list[str]:
        lowest = column.min()
        return ["background-color: #FDE2E1; font-weight: 600" if v == lowest else "" for v in column]

    styled = frame.style.apply(worst, subset=labels).format(
        {label: lambda v: "–" if pd.isna(v) else f"{v:.1f}%" for label in labels}
    )
    st.dataframe(styled, hide_index=True)
    worst_names = [
        f"{charts.model_label(m)}: {split_metrics[m].get('worst_group')}"
        for m in models
        if split_metrics.get(m, {}).get("worst_group")
    ]
    small = [g for g, n in zip(frame["Group"], frame["n"], strict=True) if n < 20]
    note = "Highlighted: each model's worst group (" + "; ".join(worst_names) + ")."
    if small:
        note += f" Fewer than 20 samples in {', '.join(small)}: those accuracies are noisy."
    st.caption(note)


def class_chart(split: str, split_metrics: dict[str, Any], models: list[str], key: str) -> None:
    classes = list(split_metrics.get(models[0], {}).get("per_class", {}))
    if not classes:
        return
    counts = [split_metrics[models[0]]["per_class"][c]["n"] for c in classes]
    series = {
        m: [get(split_metrics.get(m, {}), ("per_class", c, "accuracy")) for c in classes] for m in models
    }
    fig = charts.grouped_bars(
        classes, series, counts=counts, title=f"Per-class accuracy on {split}", y_title="accuracy"
    )
    st.plotly_chart(fig, key=key)


def split_section(split: str, metrics: dict[str, Any], models: list[str], key: str) -> None:
    split_metrics = metrics["splits"][split]
    n = split_metrics.get(models[0], {}).get("n")
    st.caption(f"{split}: {n:,} samples." if n else split)
    summary_table(split_metrics, models, metrics.get("definitions", {}))
    has_groups = bool(split_metrics.get(models[0], {}).get("per_group"))
    if has_groups:
        left, right = st.columns([5, 6])
        with left:
            st.markdown(f"**Per group on {split}**")
            group_table(split_metrics, models)
        with right:
            class_chart(split, split_metrics, models, f"{key}_classes_{split}")
    else:
        class_chart(split, split_metrics, models, f"{key}_classes_{split}")


# ---------------------------------------------------------------------- one run
