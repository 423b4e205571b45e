"""The Selective page's figures: trade-off curves, per-group curves and the current operating point.

Base figures depend on (run, rule, test split, weights) only and are cached as plain dicts; a slider move
only adds the operating point to a copy (``with_points``, ``with_vline``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from masktune_core import selective
from masktune_core.runs import Run
from studio import charts, common
from studio import selective_state as ss

POINT_COLOR = "#111827"
CURVE_COLOR = charts.MODEL_COLORS["masktune"]


def overall_coverage_at(rank: selective.Ranking, thresholds: np.ndarray) -> np.ndarray:
    """Coverage of the whole split at each global threshold (the x axis of per-group curves)."""
    accepted = np.searchsorted(-rank.keys, -np.asarray(thresholds), side="right")
    return accepted / rank.scored.n


def curve_trace(
    x: np.ndarray, y: np.ndarray, thresholds: np.ndarray, name: str, dash: str | None, hover: str
) -> go.Scattergl:
    return go.Scattergl(
        x=x,
        y=y,
        customdata=thresholds,
        name=name,
        mode="lines+markers",
        line={"color": CURVE_COLOR, "width": 2, "dash": dash},
        marker={"color": CURVE_COLOR, "size": 5},
        selected={"marker": {"color": POINT_COLOR, "size": 10}},
        unselected={"marker": {"opacity": 1}},
        hovertemplate=hover + "<br>threshold t = %{customdata:.4f}<extra>%{fullData.name}</extra>",
    )


def trade_off_figures(
    curves: dict[str, selective.Curve],
    agreement: dict[str, np.ndarray],
    agreement_rate: dict[str, float],
    aurc: dict[str, float | None],
) -> dict[str, go.Figure]:
    """The three trade-off charts of the val and test curves (no operating point: see ``with_points``).

    ``aurc`` is each split's full-range AURC, the one number comparable across rules."""
    figs = {name: go.Figure() for name in ss.CHARTS}
    for split, c in curves.items():
        dash = "dash" if split == "val" else None
        area = "undefined" if aurc[split] is None else f"{aurc[split]:.4f}"
        figs["risk_coverage"].add_trace(
            curve_trace(
                c.coverage,
                c.risk,
                c.threshold,
                f"{split} (AURC on [0, 1] {area})",
                dash,
                "coverage %{x:.1%}<br>selective risk %{y:.2%}",
            )
        )
        figs["accuracy_rejection"].add_trace(
            curve_trace(
                1 - c.coverage,
                c.accuracy,
                c.threshold,
                split,
                dash,
                "rejection rate %{x:.1%}<br>accuracy on accepted %{y:.2%}",
            )
        )
        figs["agreement"].add_trace(
            curve_trace(
                1 - c.coverage,
                agreement[split],
                c.threshold,
                split,
                dash,
                "rejection rate %{x:.1%}<br>agreement among accepted %{y:.1%}",
            )
        )
        figs["agreement"].add_trace(
            go.Scatter(
                x=[0, 1],
                y=[agreement_rate[split]] * 2,
                name=f"all of {split}: {agreement_rate[split]:.1%}",
                mode="lines",
                line={"color": "#94A3B8", "width": 1, "dash": "dot" if split == "val" else "solid"},
                hoverinfo="skip",
            )
        )
    titles = {
        "risk_coverage": ("Risk–coverage (full-range AURC in the legend)", "coverage", "selective risk"),
        "accuracy_rejection": ("Accuracy on accepted vs rejection", "rejection rate", "accuracy on accepted"),
        "agreement": ("ERM–MaskTune agreement among accepted", "rejection rate", "agreement"),
    }
    for name, fig in figs.items():
        title, x_title, y_title = titles[name]
        charts.style(fig, title=title, x_title=x_title, y_title=y_title, y_percent=True, height=340)
        fig.update_xaxes(tickformat=".0%", range=[-0.02, 1.02])
        fig.update_layout(clickmode="event+select", legend={"font": {"size": 11}})
    return figs


def group_figure(
    rank: selective.Ranking, group_curves: dict[int, selective.Curve], group_names: list[str], split: str
) -> go.Figure:
    """Jones et al.'s view: each group's accuracy on accepted against the coverage of the whole split."""
    fig = go.Figure()
    for i, (group, c) in enumerate(group_curves.items()):
        # The palette starts with MaskTune's indigo; groups skip it so no group reads as a model.
        color = charts.PALETTE[1 + i % (len(charts.PALETTE) - 1)]
        fig.add_trace(
            go.Scattergl(
                x=overall_coverage_at(rank, c.threshold),
                y=c.accuracy,
                name=group_names[group] if group < len(group_names) else str(group),
                mode="lines",
                line={"color": color, "width": 2},
                hovertemplate="coverage of the split %{x:.1%}<br>group accuracy %{y:.1%}"
                "<extra>%{fullData.name}</extra>",
            )
        )
    charts.style(
        fig,
        title="Per-group accuracy on accepted vs coverage",
        x_title=f"coverage of {split}",
        y_title="accuracy on accepted",
        y_percent=True,
        height=340,
    )
    fig.update_xaxes(tickformat=".0%", range=[-0.02, 1.02])
    return fig


@st.cache_resource(show_spinner=False, max_entries=32)
def base_figures(
    run_path: str, stamp: tuple[float, ...], rule: str, test_split: str, weights: tuple[float, ...]
) -> dict[str, dict[str, Any]]:
    """Every chart of one (run, rule, test split, weights) as a plain figure dict, built once.

    Building and validating plotly objects costs far more than the rest of a rerun, and none of it
    depends on the thresholds; a slider move only adds the operating point (``with_points``). The dicts
    are shared and never modified.
    """
    run = Run(Path(run_path))
    splits = ("val", test_split)
    rankings = {split: ss.ranking(run, rule, split, weights) for split in splits}
    curves = {split: ss.curve(run, rule, split, weights) for split in splits}
    agreement = {split: selective.agreement_along(rankings[split], curves[split]) for split in splits}
    agreement_rate = {split: float(rankings[split].scored.agree.mean()) for split in splits}
    aurc = {split: selective.summarize(rankings[split]).aurc for split in splits}
    figures = {
        name: fig.to_dict()
        for name, fig in trade_off_figures(curves, agreement, agreement_rate, aurc).items()
    }
    group_names = common.dataset_summary(run).get("group_names")
    if group_names:
        group_curves = ss.group_curves(run, rule, test_split, weights)
        figures["groups"] = group_figure(
            rankings[test_split], group_curves, group_names, test_split
        ).to_dict()
    return figures


def with_points(
    base: dict[str, Any], points: list[tuple[str, float | None, float | None]], threshold: float
) -> go.Figure:
    """``base`` plus a star at each (name, x, y) operating point; the star carries the threshold too,
    so clicking it is like clicking the curve there."""
    stars = [
        {
            "type": "scatter",
            "x": [x],
            "y": [y],
            "customdata": [threshold],
            "name": name,
            "mode": "markers",
            "marker": {"color": POINT_COLOR, "size": 13, "symbol": "star"},
            "showlegend": False,
            "hovertemplate": "current operating point<br>x %{x:.1%}, y %{y:.1%}"
            "<extra>%{fullData.name}</extra>",
        }
        for name, x, y in points
    ]
    return go.Figure({"data": [*base["data"], *stars], "layout": base["layout"]}, _validate=False)


def with_vline(base: dict[str, Any], x: float | None) -> go.Figure:
    shape = {
        "type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": "x", "yref": "paper",
        "line": {"color": POINT_COLOR, "width": 1, "dash": "dash"},
    }  # fmt: skip
    layout = {**base["layout"], "shapes": [*base["layout"].get("shapes", []), shape]}
    return go.Figure({"data": base["data"], "layout": layout}, _validate=False)
