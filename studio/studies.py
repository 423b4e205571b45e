"""Seed studies on the pages: one row per study on Runs, the study view on Results, the report download.

The numbers come from ``masktune_core.studies`` (mean, sample std, per-seed values, paired difference with
its t-interval); this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from masktune_core import studies
from masktune_core.errors import MaskTuneError
from masktune_core.runs import Run
from studio import charts, common

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "worst_group_accuracy": "Worst-group accuracy",
    "worst_class_accuracy": "Worst-class accuracy",
}


# ---------------------------------------------------------------------- Runs page
def grouped(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """(row id, runs) in listing order: a study's runs share one row, keyed by the study id."""
    rows: dict[str, list[Run]] = {}
    for run in runs:
        rows.setdefault(run.config().get("study") or run.id, []).append(run)
    return list(rows.items())


def study_state(runs: list[Run]) -> str:
    states = [run.status().get("state") or "interrupted" for run in runs]
    done = states.count("done")
    if done == len(states):
        return f"done ({done} seeds)"
    others = sorted({s for s in states if s != "done"})
    return f"{done}/{len(states)} seeds done · {', '.join(others)}"


def study_row(study: str, runs: list[Run], run_row: Callable[[Run], dict[str, Any]]) -> dict[str, Any]:
    """One Runs-table row for a study: the mean of its finished runs' numbers, its overall progress."""
    rows = [run_row(run) for run in runs]
    finished = [row for run, row in zip(runs, rows, strict=True) if run.status().get("state") == "done"]
    out = dict(rows[0])
    out.update(
        name=f"{study} ({len(runs)} seeds, mean)",
        state=study_state(runs),
        progress=sum(row["progress"] for row in rows) / len(rows),
        started=min((row["started"] for row in rows if row["started"] is not None), default=None),
        duration="–",
    )
    for key in ("erm_acc", "masktune_acc", "erm_wga", "masktune_wga"):
        values = [row[key] for row in finished if row.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def study_panel(study: str, runs: list[Run]) -> None:
    """The selected study on the Runs page: its runs, expandable, and a link to its Results view."""
    runs = studies.by_seed(runs)
    config = runs[0].config()
    st.subheader(f"Seed study {study}")
    st.caption(f"{config.get('dataset')} / {config.get('backbone')} · {study_state(runs)}")
    common_link = {"study": study}
    st.page_link(
        common.PAGES["results"],
        label="Study results",
        icon=":material/monitoring:",
        query_params=common_link,
        disabled=not any(r.status().get("state") == "done" for r in runs),
    )
    with st.expander(f"The {len(runs)} runs of this study", expanded=True):
        frame = pd.DataFrame(
            [
                {
                    "Run": run.id,
                    "Seed": run.config().get("seed"),
                    "State": run.status().get("state"),
                    "Progress": 100 * float(run.status().get("progress") or 0.0),
                }
                for run in runs
            ]
        )
        st.dataframe(
            frame,
            hide_index=True,
            column_config={
                "Progress": st.column_config.ProgressColumn(format="%.0f%%", min_value=0, max_value=100)
            },
        )
        st.caption("Open one run on its own from Results, Masks or Selective with its run id.")


# ---------------------------------------------------------------------- Results page
def one_seed_note(run: Run) -> None:
    study = run.config().get("study")
    if study:
        st.caption(f"Seed {run.config().get('seed')} of the seed study `{study}`.")
        st.page_link(
            common.PAGES["results"],
            label="See the whole study (mean, spread, one point per seed)",
            icon=":material/scatter_plot:",
            query_params={"study": study},
        )
    else:
        st.info(
            f"One seed (seed {run.config().get('seed')}): a second seed can move these numbers by several "
            "points. Launch a seed study (the **Seeds** field on Launch, or `run --seeds 0,1,2`) to see "
            "their spread.",
            icon=":material/info:",
        )


def strip_figure(summary: dict[str, Any], split: str, metric: str) -> go.Figure:
    """One point per seed for ERM and MaskTune, with a bar at each mean."""
    values = summary["splits"][split][metric]
    fig = go.Figure()
    for model in studies.MODELS:
        if model not in values:
            continue
        label = charts.model_label(model)
        points = values[model]["values"]
        fig.add_trace(
            go.Scatter(
                x=[label] * len(points),
                y=points,
                mode="markers",
                name=f"{label} (one point per seed)",
                marker={"color": charts.model_color(model), "size": 11, "opacity": 0.8},
                text=[f"seed {s}" for s in summary["seeds"]],
                hovertemplate="%{text}: %{y:.1%}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[label],
                y=[values[model]["mean"]],
                mode="markers",
                name=f"{label} mean",
                marker={"symbol": "line-ew-open", "size": 40, "color": "#111", "line": {"width": 2}},
                hovertemplate="mean %{y:.1%}<extra></extra>",
                showlegend=False,
            )
        )
    return charts.style(fig, title=f"{METRIC_LABELS[metric]} on {split}", y_percent=True, height=300)


def summary_frame(summary: dict[str, Any], split: str) -> pd.DataFrame:
    rows = []
    for metric, values in summary["splits"][split].items():
        row = {"Metric": METRIC_LABELS[metric]}
        for model in studies.MODELS:
            if model in values:
                v = values[model]
                std = "" if v["std"] is None else f" ± {100 * v['std']:.1f}"
                row[charts.model_label(model)] = f"{100 * v['mean']:.1f}{std} %"
        diff = values.get("difference")
        if diff is not None:
            interval = diff["interval"]
            row["MaskTune − ERM (paired)"] = f"{100 * diff['mean']:+.1f} pp" + (
                "" if interval is None else f"  [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def study_view(study: str, runs: list[Run]) -> None:
    """The Results page for a seed study: mean ± std, one point per seed, the paired difference."""
    summary = studies.summarize(runs, study)
    st.subheader(f"Seed study {study}")
    n = summary["n_seeds"]
    st.caption(
        f"{summary['dataset']} / {summary['backbone']} · {n} finished seed{'s' if n != 1 else ''}: "
        + ", ".join(str(s) for s in summary["seeds"])
    )
    if summary["missing"]:
        st.warning(f"Not finished, so left out: {', '.join(summary['missing'])}.", icon=":material/pending:")
    if n == 0:
        return
    if n == 1:
        st.info("One seed only: no spread over seeds can be given yet.", icon=":material/info:")
    verdict = studies.study_verdict(summary)
    if verdict:
        show = (
            st.warning
            if verdict["label"] == "hurt"
            else st.success
            if verdict["label"] == "helped"
            else st.info
        )
        show(verdict["text"], icon=":material/gavel:")
    main = summary["main_test_split"]
    splits = [main] + [s for s in summary["splits"] if s != main]
    tabs = st.tabs([f"{s} (main)" if s == main else s for s in splits])
    for tab, split in zip(tabs, splits, strict=True):
        with tab:
            st.dataframe(summary_frame(summary, split), hide_index=True)
            left, right = st.columns(2)
            for column, metric in zip((left, right), ("accuracy", "worst_group_accuracy"), strict=True):
                if metric in summary["splits"][split]:
                    column.plotly_chart(strip_figure(summary, split, metric), key=f"strip_{split}_{metric}")
    st.caption(
        "± is the "
        + studies.DEFINITIONS["std"]
        + ". MaskTune − ERM is paired: "
        + studies.DEFINITIONS["difference"]
        + "; in brackets its "
        + studies.DEFINITIONS["interval"]
        + "."
    )
    report_button([study], f"study_{study}")


def show_study_from_query() -> bool:
    """Show the study named by ``?study=`` if there is one in the store; True when shown."""
    study = st.query_params.get("study")
    if not study:
        return False
    try:
        runs = studies.study_runs(common.store(), study)
    except MaskTuneError:
        st.warning(f"No seed study `{study}` in the run store.", icon=":material/search_off:")
        return False
    study_view(study, runs)
    return True


def report_button(ids: Sequence[str], key: str) -> None:
    """Download the HTML report of a run or a study; it is built (about ten seconds) on the click."""

    def build() -> bytes:
        from masktune_core.report import build_report

        try:
            return build_report(common.store(), ids).html().encode()
        except MaskTuneError as err:  # shown in the file rather than breaking the page
            return f"<!DOCTYPE html><p>The report could not be made: {escape(str(err))}</p>".encode()

    where, _ = st.columns([1, 3])
    where.download_button(
        "Download report",
        build,
        file_name=f"{ids[0]}-report.html",
        mime="text/html",
        icon=":material/description:",
        key=f"{key}_report",
        help="One HTML file that opens offline: what was run, the headline and verdict, tables, mask "
        "gallery, selective classification, training and limits.",
    )
