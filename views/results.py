"""Results: one finished run in depth, or several side by side (``?runs=A,B``).

Every number names its split and its definition; the definitions come from the run's own metrics.json.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import streamlit as st

from masktune_core.runs import Run
from studio import charts, common
from studio import studies as study_ui

st.title("Results")

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
def headline(metrics: dict[str, Any], models: list[str]) -> None:
    """Accuracy and worst-group accuracy of every model on the main test split, one row per metric."""
    split = metrics.get("main_test_split")
    values = metrics.get("splits", {}).get(split, {})
    erm = values.get("erm", {})
    for label, key in (("accuracy", "accuracy"), ("worst-group accuracy", "worst_group_accuracy")):
        if all(values.get(m, {}).get(key) is None for m in models):
            continue
        columns = st.columns(3)
        for column, model in zip(columns, models, strict=False):
            value = values.get(model, {}).get(key)
            delta = None
            if model != "erm" and value is not None and erm.get(key) is not None:
                delta = f"{100 * (value - erm[key]):+.1f} pp vs ERM"
            column.metric(
                f"{charts.model_label(model)} {label} · {split}",
                common.pct(value),
                delta,
                border=True,
                help=metrics.get("definitions", {}).get(key),
            )


def training_section(run: Run, key: str) -> None:
    events = run.events()
    config = run.config()
    if not events:
        st.caption("No training events recorded.")
        return
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_figure(events, erm_total=config.get("epochs")), key=f"{key}_loss")
    right.plotly_chart(charts.accuracy_figure(events, erm_total=config.get("epochs")), key=f"{key}_acc")
    masks = [e for e in events if e.get("kind") == "masks"]
    if masks:
        columns = st.columns(max(len(masks), 2))
        for column, event in zip(columns, masks, strict=False):
            column.metric(
                f"Mean masked area · {event['stage'].replace('_', ' ')}",
                common.pct(event.get("mean_area")),
                help="Mean fraction of each training image's pixels that the masks black out.",
            )
            column.caption(f"{common.pct(event.get('empty_fraction'))} of images got an empty mask.")
    seconds = charts.stage_seconds(events)
    if seconds:
        st.plotly_chart(charts.timings_figure(events), key=f"{key}_timings")
        st.caption(f"Total {charts.duration_text(sum(seconds.values()))} of stage time.")


def run_header(run: Run) -> None:
    config = run.config()
    st.subheader(config.get("name") or run.id)
    details = [
        f"`{run.id}`",
        f"{config.get('dataset')} / {config.get('backbone')}",
        f"ERM {config.get('epochs')} epochs, lr {config.get('lr')}, {config.get('optimizer')}",
        f"finetune lr {config.get('finetune_lr')}",
        f"{config.get('cam_method')} masks, {config.get('threshold_rule')}",
        f"seed {config.get('seed')}",
    ]
    st.caption(" · ".join(details))
    common.run_links(run.id, ("masks", "selective", "try"))


def run_view(run: Run, key: str) -> None:
    metrics = common.metrics(run)
    run_header(run)
    study_ui.one_seed_note(run)
    if not metrics:
        st.warning("This run has no metrics.json; it did not reach the evaluate stage.")
        return
    models = models_of(metrics)
    headline(metrics, models)

    st.markdown("#### Accuracy by split")
    splits = split_order(metrics)
    main = metrics.get("main_test_split")
    tabs = st.tabs([f"{s} (main)" if s == main else s for s in splits])
    for tab, split in zip(tabs, splits, strict=True):
        with tab:
            split_section(split, metrics, models, key)
    st.caption("The ERM checkpoint was selected on `val`; the test splits are never used for any choice.")

    st.markdown("#### Training")
    training_section(run, key)

    skipped = run.status().get("skipped_files") or common.dataset_summary(run).get("skipped_files") or []
    if skipped:
        with st.expander(f"{len(skipped)} unreadable image(s) skipped while loading the data"):
            st.code("\n".join(skipped), language=None)
    with st.expander("Log (log.txt)"):
        st.code(run.log_text() or "(empty)", language=None)
    downloads(run.id, {run.id: metrics}, key)
    study_ui.report_button([run.id], key)


def downloads(stem: str, named: dict[str, dict[str, Any]], key: str) -> None:
    left, right, _ = st.columns([1, 1, 3])
    payload = next(iter(named.values())) if len(named) == 1 else named
    left.download_button(
        "Metrics (JSON)",
        json.dumps(payload, indent=2).encode(),
        file_name=f"{stem}-metrics.json",
        mime="application/json",
        icon=":material/download:",
        key=f"{key}_json",
    )
    right.download_button(
        "Metrics (CSV)",
        metrics_csv(named),
        file_name=f"{stem}-metrics.csv",
        mime="text/csv",
        icon=":material/download:",
        key=f"{key}_csv",
        help="Long format: split, model, metric, value (nested metrics joined with '.').",
    )


# ---------------------------------------------------------------------- several runs
def comparison(runs: list[Run]) -> None:
    named = {run.id: common.metrics(run) or {} for run in runs}
    rows = []
    for run in runs:
        metrics = named[run.id]
        split = metrics.get("main_test_split")
        values = metrics.get("splits", {}).get(split, {})
        erm, masktune = values.get("erm", {}), values.get("masktune", {})
        row = {
            "Run": run.config().get("name") or run.id,
            "Dataset / backbone": f"{run.config().get('dataset')} / {run.config().get('backbone')}",
            "Split": split,
        }
        for label, key in (("acc", "accuracy"), ("worst-group", "worst_group_accuracy")):
            row[f"ERM {label}"] = as_pct(erm.get(key))
            row[f"MaskTune {label}"] = as_pct(masktune.get(key))
            both = erm.get(key) is not None and masktune.get(key) is not None
            row[f"Δ {label}"] = 100 * (masktune[key] - erm[key]) if both else None
        row["RandMask acc"] = as_pct(values.get("randmask", {}).get("accuracy"))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame["RandMask acc"].isna().all():
        frame = frame.drop(columns="RandMask acc")
    splits = set(frame["Split"])
    # A split shared by every run is named once in the heading; otherwise each row names its own.
    where = f"`{next(iter(splits))}`" if len(splits) == 1 else "each run's main test split"
    if len(splits) == 1:
        frame = frame.drop(columns="Split")
    column_config = {
        c: st.column_config.NumberColumn(format=DELTA if c.startswith("Δ") else PERCENT)
        for c in frame.columns
        if c not in ("Run", "Dataset / backbone", "Split")
    }
    column_config["Split"] = st.column_config.TextColumn("Main test split")
    st.markdown(f"**Accuracy and worst-group accuracy on {where}**")
    st.dataframe(frame, hide_index=True, column_config=column_config)

    names = list(frame["Run"])
    left, right = st.columns(2)
    for column, key, label in (
        (left, "accuracy", "Accuracy"),
        (right, "worst_group_accuracy", "Worst-group accuracy"),
    ):
        series = {}
        for model in charts.MODEL_ORDER:
            values = [
                get(named[r.id], ("splits", named[r.id].get("main_test_split"), model, key)) for r in runs
            ]
            if any(v is not None for v in values):
                series[model] = values
        if series:
            column.plotly_chart(
                charts.grouped_bars(names, series, title=f"{label} on {where.replace('`', '')}"),
                key=f"compare_{key}",
            )
    config_differences(runs)
    downloads("comparison", named, "compare")


def config_differences(runs: list[Run]) -> None:
    configs = {run.config().get("name") or run.id: run.config() for run in runs}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    if not differing:
        st.caption("The runs have identical configurations (differences come from randomness only).")
        return
    st.markdown("**Configuration differences**")
    st.dataframe(
        pd.DataFrame(
            {name: [str(c.get(k)) for k in differing] for name, c in configs.items()}, index=differing
        )
    )


# ---------------------------------------------------------------------- page
def chosen_ids(ids: list[str]) -> list[str]:
    wanted = [i for i in (st.query_params.get("runs") or "").split(",") if i in ids]
    if not wanted and st.query_params.get("run") in ids:
        wanted = [st.query_params["run"]]
    return wanted or ids[:1]


def mirror(selected: list[str]) -> None:
    """Keep ?run= (the first run, for links to other pages) and ?runs= (all of them) in the URL."""
    if selected and st.query_params.get("run") != selected[0]:
        st.query_params["run"] = selected[0]
    joined = ",".join(selected)
    if len(selected) > 1 and st.query_params.get("runs") != joined:
        st.query_params["runs"] = joined
    elif len(selected) <= 1 and "runs" in st.query_params:
        del st.query_params["runs"]


with common.friendly_errors("The results page"):
    done = [run for run in common.store().list() if run.status().get("state") == "done"]
    if not done:
        st.info(
            "No finished run yet. Results appear here once a run has gone through ERM, masking, "
            "finetuning and evaluation.",
            icon=":material/inbox:",
        )
        common.link("launch", "Launch an experiment", icon=":material/rocket_launch:")
        common.link("runs", "See all runs and their progress", icon=":material/table_rows:")
        st.stop()
    if study_ui.show_study_from_query():
        st.stop()
    by_id = {run.id: run for run in done}
    ids = list(by_id)
    selected = st.multiselect(
        "Runs",
        ids,
        default=chosen_ids(ids),
        format_func=lambda i: common.run_label(by_id[i]),
        key="results_runs",
        help="Pick several finished runs to compare them side by side.",
        placeholder="Choose one or more finished runs",
    )
    mirror(selected)
    if not selected:
        st.caption("Choose a run above.")
    elif len(selected) == 1:
        run_view(by_id[selected[0]], "run")
    else:
        st.header("Comparison")
        comparison([by_id[i] for i in selected])
        st.header("Each run")
        tabs = st.tabs([by_id[i].config().get("name") or i for i in selected])
        for tab, run_id in zip(tabs, selected, strict=True):
            with tab:
                run_view(by_id[run_id], f"run_{run_id}")
