"""Results: one finished run in depth, or several side by side (``?runs=A,B``).

Every number names its split and its definition; the definitions come from the run's own metrics.json.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from masktune_core.runs import Run
from studio import charts, common, verdict_view
from studio import results_tables as tables
from studio import studies as study_ui

st.title("Results")


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


def finetune_summary(config: dict) -> str:
    """The finetune candidates in a few words; runs made before the candidate grid show their one lr."""
    lrs = config.get("finetune_lrs") or [config.get("finetune_lr")]
    fills = config.get("finetune_fills") or [config.get("fill")]
    text = f"finetune lr {', '.join(f'{lr:g}' for lr in lrs if lr)} × {', '.join(map(str, fills))}"
    if config.get("finetune_epochs"):
        text += f", {config['finetune_epochs']} epoch(s), {config.get('finetune_checks') or 1} check(s) each"
    starts = {"best": "the kept ERM", "last": "ERM's last state"}
    chosen = [starts[s] for s in str(config.get("finetune_start") or "best").split(",") if s in starts]
    text += f", from {' and from '.join(chosen)}" if chosen != [starts["best"]] else ""
    return text


def run_header(run: Run) -> None:
    config = run.config()
    st.subheader(config.get("name") or run.id)
    details = [
        f"`{run.id}`",
        f"{config.get('dataset')} / {config.get('backbone')}",
        f"ERM {config.get('epochs')} epochs, lr {config.get('lr')}, {config.get('optimizer')}",
        finetune_summary(config),
        f"{config.get('cam_method')} masks, {config.get('threshold_rule')}"
        + (f" grown {config['mask_dilation']} px" if config.get("mask_dilation") else ""),
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
    models = tables.models_of(metrics)
    verdict_view.verdict_banner(metrics)
    headline(metrics, models)

    st.markdown("#### Accuracy by split")
    splits = tables.split_order(metrics)
    main = metrics.get("main_test_split")
    tabs = st.tabs([f"{s} (main)" if s == main else s for s in splits])
    for tab, split in zip(tabs, splits, strict=True):
        with tab:
            tables.split_section(split, metrics, models, key)
    st.caption("The ERM checkpoint was selected on `val`; the test splits are never used for any choice.")
    verdict_view.candidates_table(metrics)

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
        tables.metrics_csv(named),
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
            row[f"ERM {label}"] = tables.as_pct(erm.get(key))
            row[f"MaskTune {label}"] = tables.as_pct(masktune.get(key))
            both = erm.get(key) is not None and masktune.get(key) is not None
            row[f"Δ {label}"] = 100 * (masktune[key] - erm[key]) if both else None
        row["RandMask acc"] = tables.as_pct(values.get("randmask", {}).get("accuracy"))
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
        c: st.column_config.NumberColumn(format=tables.DELTA if c.startswith("Δ") else tables.PERCENT)
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
                tables.get(named[r.id], ("splits", named[r.id].get("main_test_split"), model, key))
                for r in runs
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
