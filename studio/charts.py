"""Plotly figures shared by the pages, so every chart uses the same colours, fonts and axis conventions.

Colours are fixed per model everywhere in the dashboard: ERM slate blue-grey, MaskTune indigo (the theme's
primary colour), RandMask amber. Accuracy axes are always fractions shown as percentages.

Curves come from a run's ``events.jsonl``: ERM step losses carry ``epoch`` as a fraction of the ERM
epochs; finetune and RandMask step losses carry the fraction of their single epoch. ``training_axis``
places them after ERM, so one x axis ("training epochs") reads left to right through the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from studio.common import MODEL_LABELS

MODEL_COLORS = {"erm": "#64748B", "masktune": "#4F46E5", "randmask": "#E8A33D"}
MODEL_ORDER = ("erm", "masktune", "randmask")
# Used for anything that is not one of the three models (several runs side by side, groups, ...).
PALETTE = ("#4F46E5", "#0EA5E9", "#E8A33D", "#10B981", "#EF4444", "#8B5CF6", "#64748B", "#EC4899")
FONT = "Source Sans Pro, sans-serif"


def model_color(model: str) -> str:
    """The fixed colour of ``model`` ("erm", "masktune", "randmask"; "masktune_2" etc. count as masktune)."""
    base = model.split("_")[0]
    return MODEL_COLORS.get(base, PALETTE[-1])


def model_label(model: str) -> str:
    base, _, iteration = model.partition("_")
    label = MODEL_LABELS.get(base, model)
    return f"{label} (iteration {iteration})" if iteration else label


def style(
    fig: go.Figure,
    *,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    y_percent: bool = False,
    height: int = 320,
) -> go.Figure:
    """Apply the dashboard's layout: compact margins, legend on top, light grid, optional % y axis."""
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}} if title else None,
        height=height,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        font={"family": FONT, "size": 13},
        # Below the plot, where it never collides with the title however many entries it has.
        legend={
            "orientation": "h",
            "yanchor": "top",
            # Clear the tick labels (and the axis title, when there is one); paper units scale with height.
            "y": -(90 if x_title else 40) / max(height - 100, 100),
            "xanchor": "left",
            "x": 0,
            "title": None,
        },
        plot_bgcolor="white",
        hovermode="closest",
    )
    fig.update_xaxes(title_text=x_title, showgrid=False, linecolor="#CBD5E1", zeroline=False)
    fig.update_yaxes(title_text=y_title, gridcolor="#E2E8F0", zeroline=False)
    if y_percent:
        fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    counts: Sequence[int] | None = None,
    y_title: str = "accuracy",
    title: str | None = None,
    percent: bool = True,
    colors: Mapping[str, str] | None = None,
    height: int = 340,
) -> go.Figure:
    """One bar per (category, series); ``series`` maps a model name (or any label) to one value per category.

    Model names get their fixed colour and label; other labels take ``colors`` or the palette.
    ``counts`` (samples per category) goes into the hover text, so a 100% bar on 3 samples reads as such.
    """
    fig = go.Figure()
    for i, (name, values) in enumerate(series.items()):
        is_model = name.split("_")[0] in MODEL_COLORS
        color = (colors or {}).get(name) or (model_color(name) if is_model else PALETTE[i % len(PALETTE)])
        label = model_label(name) if is_model else name
        text = [_fmt(v, percent) for v in values]
        custom = list(counts) if counts is not None else ["" for _ in categories]
        fig.add_trace(
            go.Bar(
                x=list(categories),
                y=[None if v is None else v for v in values],
                name=label,
                marker_color=color,
                text=text,
                textposition="outside",
                cliponaxis=False,
                customdata=custom,
                hovertemplate=f"<b>{label}</b><br>%{{x}}: %{{text}}"
                + ("<br>n = %{customdata}" if counts is not None else "")
                + "<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.05)
    style(fig, title=title, y_title=y_title, y_percent=percent, height=height)
    if percent:
        fig.update_yaxes(range=[0, 1.12])
    return fig


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.3g}"


# ---------------------------------------------------------------------- curves from events.jsonl
def erm_epochs(events: Iterable[Mapping[str, Any]], default: int | None = None) -> int:
    """Number of ERM epochs the curves span (from the epoch events, else ``default``, else 0)."""
    done = [int(e["epoch"]) for e in events if e.get("stage") == "erm" and e.get("kind") == "epoch"]
    return max([*done, default or 0])


def training_axis(stage: str, epoch: float, erm_total: int) -> float:
    """Position of an event on the shared "training epochs" axis: ERM first, then each finetune epoch.

    ``finetune_i`` occupies (E + i - 1, E + i]; RandMask starts from the ERM checkpoint like finetune_1,
    so it shares finetune_1's interval.
    """
    if stage == "erm":
        return epoch
    if stage.startswith("finetune_"):
        return erm_total + int(stage.split("_")[1]) - 1 + epoch
    if stage == "randmask":
        return erm_total + epoch
    return epoch


def _latest_attempt(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Drop points a resumed stage re-did: when x goes back, the newer points replace the older ones."""
    kept: list[tuple[float, float]] = []
    for x, y in points:
        while kept and kept[-1][0] >= x:
            kept.pop()
        kept.append((x, y))
    return kept


def _curve_model(stage: str) -> str:
    if stage == "erm":
        return "erm"
    if stage == "randmask":
        return "randmask"
    return "masktune" if stage.endswith("_1") else f"masktune_{stage.split('_')[1]}"


def loss_figure(
    events: Sequence[Mapping[str, Any]], *, erm_total: int | None = None, height: int = 300
) -> go.Figure:
    """Training loss per step: ERM, then MaskTune finetune (and RandMask) on the same epoch axis."""
    total = erm_epochs(events, erm_total)
    by_stage: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        if event.get("kind") == "step" and event.get("loss") is not None:
            stage = str(event.get("stage"))
            by_stage.setdefault(stage, []).append(
                (training_axis(stage, float(event["epoch"]), total), float(event["loss"]))
            )
    fig = go.Figure()
    for stage, points in by_stage.items():
        points = _latest_attempt(points)
        model = _curve_model(stage)
        fig.add_trace(
            go.Scattergl(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines",
                name=f"{model_label(model)} ({stage.replace('_', ' ')})" if stage != "erm" else "ERM",
                line={
                    "color": model_color(model),
                    "width": 2,
                    "dash": "dot" if model == "randmask" else None,
                },
                hovertemplate="epoch %{x:.2f}<br>loss %{y:.4f}<extra>%{fullData.name}</extra>",
            )
        )
    _mark_finetune_start(fig, total, by_stage)
    return style(
        fig,
        title="Training loss",
        x_title="epoch",
        y_title="loss",
        height=height,
    )


def accuracy_figure(
    events: Sequence[Mapping[str, Any]], *, erm_total: int | None = None, height: int = 300
) -> go.Figure:
    """Validation accuracy per epoch (and worst-group accuracy where the split has groups)."""
    total = erm_epochs(events, erm_total)
    latest: dict[tuple[str, int], Mapping[str, Any]] = {}
    for event in events:
        if event.get("kind") == "epoch":
            latest[(str(event.get("stage")), int(event["epoch"]))] = event  # a resumed stage overwrites
    fig = go.Figure()
    erm = sorted((k[1], e) for k, e in latest.items() if k[0] == "erm")
    for metric, dash, label in (
        ("val_accuracy", None, "accuracy"),
        ("val_worst_group_accuracy", "dash", "worst group"),
    ):
        xs = [epoch for epoch, e in erm if e.get(metric) is not None]
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[e[metric] for _, e in erm if e.get(metric) is not None],
                    mode="lines+markers",
                    name=f"ERM val {label}",
                    line={"color": MODEL_COLORS["erm"], "dash": dash},
                    hovertemplate="epoch %{x}<br>%{y:.1%}<extra>%{fullData.name}</extra>",
                )
            )
    for (stage, epoch), event in sorted(latest.items()):
        if stage == "erm":
            continue
        model = _curve_model(stage)
        for metric, symbol, label in (
            ("val_accuracy", "circle", "accuracy"),
            ("val_worst_group_accuracy", "diamond-open", "worst group"),
        ):
            if event.get(metric) is None:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[training_axis(stage, epoch, total)],
                    y=[event[metric]],
                    mode="markers",
                    name=f"{model_label(model)} val {label}",
                    marker={
                        "color": model_color(model),
                        "size": 11,
                        "symbol": symbol,
                        "line": {"width": 2, "color": model_color(model)},
                    },
                    hovertemplate=f"after {stage.replace('_', ' ')}<br>%{{y:.1%}}"
                    f"<extra>{model_label(model)}</extra>",
                )
            )
    _mark_finetune_start(fig, total, {s: [] for s, _ in latest})
    style(
        fig,
        title="Validation accuracy",
        x_title="epoch",
        y_title="accuracy",
        y_percent=True,
        height=height,
    )
    fig.update_yaxes(range=[0, 1.05])
    return fig


def _mark_finetune_start(fig: go.Figure, erm_total: int, stages: Mapping[str, Any]) -> None:
    if erm_total and any(s != "erm" for s in stages):
        fig.add_vline(x=erm_total, line={"color": "#94A3B8", "dash": "dot", "width": 1})
        fig.add_annotation(
            x=erm_total,
            y=1,
            yref="paper",
            text="masks → finetune",
            showarrow=False,
            xanchor="left",
            yanchor="top",
            font={"size": 11, "color": "#64748B"},
        )


def stage_seconds(events: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Wall-clock seconds per stage, summed over attempts (a resumed run loads its data again)."""
    seconds: dict[str, float] = {}
    for event in events:
        if event.get("kind") == "timing":
            stage = str(event.get("stage"))
            seconds[stage] = seconds.get(stage, 0.0) + float(event.get("seconds") or 0.0)
    return seconds


def timings_figure(events: Sequence[Mapping[str, Any]], *, height: int | None = None) -> go.Figure:
    """Horizontal bars: seconds spent in each stage, in pipeline order, top to bottom."""
    seconds = stage_seconds(events)
    stages = list(seconds)[::-1]
    colors = [
        model_color(_curve_model(s)) if s.startswith(("erm", "finetune", "randmask")) else "#94A3B8"
        for s in stages
    ]
    fig = go.Figure(
        go.Bar(
            x=[seconds[s] for s in stages],
            y=[s.replace("_", " ") for s in stages],
            orientation="h",
            marker_color=colors,
            text=[duration_text(seconds[s]) for s in stages],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.1f} s<extra></extra>",
        )
    )
    style(fig, title="Time per stage", x_title="seconds", height=height or 90 + 32 * len(stages))
    fig.update_xaxes(showgrid=True, gridcolor="#E2E8F0", rangemode="tozero")
    fig.update_layout(showlegend=False)
    return fig


def duration_text(seconds: float | None) -> str:
    """A human duration ("42 s", "3 min 05 s", "1 h 02 min"); "–" when unknown."""
    if seconds is None:
        return "–"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


__all__ = [
    "MODEL_COLORS",
    "MODEL_LABELS",
    "MODEL_ORDER",
    "PALETTE",
    "accuracy_figure",
    "duration_text",
    "erm_epochs",
    "grouped_bars",
    "loss_figure",
    "model_color",
    "model_label",
    "stage_seconds",
    "style",
    "timings_figure",
    "training_axis",
]
