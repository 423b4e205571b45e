"""Selective classification: accept a prediction only when the rule trusts it. Thresholds are tuned and
fitted on validation; test shows what they are worth. Only saved predictions are used: no model runs here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from masktune_core import selective
from masktune_core.errors import MaskTuneError
from masktune_core.runs import Run
from studio import charts, common, viz
from studio import selective_state as ss

KEY_TEST_SPLIT = "sel_test_split"
KEY_LOAD_NAME = "sel_load_name"
POINT_COLOR = "#111827"
CURVE_COLOR = charts.MODEL_COLORS["masktune"]
MAX_IMPORT_BYTES = 1_000_000


def pp(value: float | None, reference: float | None) -> str | None:
    """A delta in percentage points for st.metric, or None when either side is undefined."""
    if value is None or reference is None:
        return None
    return f"{100 * (value - reference):+.1f} pp"


# ---------------------------------------------------------------------------------------- callbacks
def fit_on_val(run_path: str, rule: str, weights: tuple[float, ...], num_classes: int) -> None:
    target = st.session_state[ss.KEY_TARGET] / 100
    fit = selective.fit_global_threshold(ss.ranking(Run(Path(run_path)), rule, "val", weights), target)
    ss.set_global(fit.threshold, num_classes)
    st.session_state[ss.KEY_FIT] = {"threshold": ss.global_threshold(), "target": target}
    if fit.reachable:
        text = f"Fitted t = {fit.threshold:.4f} on val: coverage {fit.coverage:.1%} (target {target:.0%})."
        ss.show_message("fit", "success", text)
    else:
        ss.show_message(
            "fit",
            "warning",
            f"A coverage of {target:.0%} is out of reach on val: this rule accepts at most "
            f"{fit.max_coverage:.1%} of it. t = {fit.threshold:.4f} gives that maximum.",
        )


def save_set(run_path: str, rule: str, num_classes: int) -> None:
    name = st.session_state.get(ss.KEY_SAVE_NAME, "").strip()
    if not name:
        ss.show_message("sets", "error", "Give the threshold set a name first.")
        return
    run = Run(Path(run_path))
    thresholds = ss.current_thresholds(num_classes)
    fitted_on, target = ss.fit_provenance(thresholds)
    try:
        threshold_set = selective.ThresholdSet(name, rule, thresholds, fitted_on, target)
        replaced = name in run.threshold_sets()
        run.save_threshold_set(name, json.loads(threshold_set.to_json()))
    except MaskTuneError as err:
        ss.show_message("sets", "error", str(err))
        return
    st.session_state[KEY_LOAD_NAME] = name
    ss.show_message(
        "sets", "success", f"Saved {name!r} to run {run.id}" + (" (replaced)." if replaced else ".")
    )


def load_set(run_path: str, num_classes: int) -> None:
    name = st.session_state.get(KEY_LOAD_NAME)
    value = Run(Path(run_path)).threshold_sets().get(name)
    if value is None:
        ss.show_message("sets", "error", f"Threshold set {name!r} is no longer in this run.")
        return
    try:
        ss.apply_set(selective.ThresholdSet.from_json(json.dumps(value), num_classes))
    except MaskTuneError as err:
        ss.show_message("sets", "error", f"Threshold set {name!r} cannot be loaded: {err}")
        return
    ss.show_message("sets", "success", f"Loaded {name!r}.")


def import_set(num_classes: int) -> None:
    upload = st.session_state.get(ss.KEY_IMPORT)
    if upload is None:
        return
    data = upload.getvalue()
    if len(data) > MAX_IMPORT_BYTES:
        ss.show_message(
            "sets", "error", f"{upload.name}: a threshold set is a small JSON file; this is too big."
        )
        return
    try:
        threshold_set = ss.parse_import(data, num_classes)
    except MaskTuneError as err:
        ss.show_message("sets", "error", f"{upload.name} cannot be imported: {err}")
        return
    ss.apply_set(threshold_set)
    ss.show_message("sets", "success", f"Imported {threshold_set.name!r} from {upload.name}.")


def show_message(where: str) -> None:
    message = ss.pop_message(where)
    if message is not None:
        kind, text = message
        getattr(st, kind)(text)


# ---------------------------------------------------------------------------------------- figures
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
    curves: dict[str, selective.Curve], agreement: dict[str, np.ndarray], agreement_rate: dict[str, float]
) -> dict[str, go.Figure]:
    """The three trade-off charts of the val and test curves (no operating point: see ``with_points``)."""
    figs = {name: go.Figure() for name in ss.CHARTS}
    for split, c in curves.items():
        dash = "dash" if split == "val" else None
        aurc = "–" if c.aurc is None else f"{c.aurc:.4f}"
        figs["risk_coverage"].add_trace(
            curve_trace(
                c.coverage,
                c.risk,
                c.threshold,
                f"{split} (AURC {aurc})",
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
        "risk_coverage": ("Risk–coverage (AURC in the legend)", "coverage", "selective risk"),
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
                x=ss.overall_coverage_at(rank, c.threshold),
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
    agreement = {split: ss.agreement_along(rankings[split], curves[split]) for split in splits}
    agreement_rate = {split: float(rankings[split].scored.agree.mean()) for split in splits}
    figures = {
        name: fig.to_dict() for name, fig in trade_off_figures(curves, agreement, agreement_rate).items()
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


# ---------------------------------------------------------------------------------------- page parts
def global_slider() -> None:
    st.slider(
        "Global threshold t",
        0.0,
        1.0,
        step=ss.SLIDER_STEP,
        format="%.3f",
        key=ss.KEY_GLOBAL,
        help="Accept a sample predicted as class c iff the rule's confidence ≥ t_c × w_c; "
        "t_c is t unless the class has its own threshold.",
    )
    exact = ss.global_threshold()
    if exact != st.session_state[ss.KEY_GLOBAL]:
        st.caption(
            f"In use: t = {exact:.6f}, the exact value from the curve, fit or set; "
            "moving the slider replaces it."
        )


def per_class_controls(class_names: list[str]) -> None:
    num_classes = len(class_names)
    label = f"Per-class thresholds and tolerance weights ({num_classes} classes)"
    with st.expander(label, expanded=num_classes <= 3):
        st.caption(
            "Each class follows the global threshold unless **own** is on. The weight scales the class's "
            "threshold (τ = t × w): below 1 it is more tolerant of a hard class, as in the report."
        )
        widths = [1.2, 0.6, 3, 1.1, 2.4]
        for col, text in zip(
            st.columns(widths), ("class", "own", "threshold t_c", "weight w_c", "τ_c"), strict=True
        ):
            col.caption(text)
        for c, name in enumerate(class_names):
            own = st.session_state[ss.key_own(c)]
            if not own:
                ss.follow_global(c)
            row = st.columns(widths, vertical_alignment="center")
            row[0].markdown(f"**{viz.md_escape(name)}**")
            row[1].toggle("own", key=ss.key_own(c), label_visibility="collapsed")
            row[2].slider(
                f"threshold for {name}",
                0.0,
                1.0,
                step=ss.SLIDER_STEP,
                format="%.3f",
                key=ss.key_class(c),
                disabled=not own,
                label_visibility="collapsed",
            )
            weight = row[3].number_input(
                f"weight for {name}",
                ss.WEIGHT_RANGE[0],
                ss.WEIGHT_RANGE[1],
                step=0.05,
                format="%.2f",
                key=ss.key_weight(c),
                label_visibility="collapsed",
            )
            t = ss.threshold_in_use(ss.key_class(c)) if own else ss.global_threshold()
            row[4].markdown(f"τ = {t * weight:.3f}")


def metrics_panel(
    split: str, role: str, result: dict[str, Any], reference: dict[str, Any], has_groups: bool
) -> None:
    st.markdown(f"**{role}** · `{split}`")
    st.caption(f"{result['n_accepted']:,} of {result['n']:,} samples accepted")
    # (label, key, delta colour, help); two per row keeps the values readable on a laptop screen.
    cells = [
        ("Accuracy on accepted", "accuracy_on_accepted", "normal", None),
        ("Selective risk", "selective_risk", "inverse", "error rate on the accepted samples"),
        ("Coverage", "coverage", "normal", "share of the split's samples accepted"),
        ("Rejection rate", "rejection_rate", "inverse", None),
        (
            "Agreement rate",
            "agreement_rate",
            "off",
            "share of all samples on which ERM and MaskTune predict the same class; no threshold changes it",
        ),
    ]
    if has_groups:
        cells.append(
            (
                "Worst-group accuracy",
                "worst_group_accuracy_on_accepted",
                "normal",
                "accuracy on the accepted samples of the worst group (among groups with one accepted)",
            )
        )
    for start in range(0, len(cells), 2):
        for col, (label, key, colour, help_text) in zip(
            st.columns(2), cells[start : start + 2], strict=False
        ):
            delta = None if colour == "off" else pp(result[key], reference[key])
            col.metric(label, common.pct(result[key]), delta, delta_color=colour, help=help_text)


def per_class_table(
    class_names: list[str], thresholds: selective.Thresholds, results: dict[str, dict[str, Any]]
) -> None:
    rows = []
    for c, name in enumerate(class_names):
        row: dict[str, Any] = {"class": name, "τ = t × w": float(thresholds.tau[c])}
        for split, res in results.items():
            stats = res["per_class"][c]
            row[f"{split} n"] = stats["n"]
            row[f"{split} coverage"] = None if stats["coverage"] is None else 100 * stats["coverage"]
            accuracy = stats["accuracy_on_accepted"]
            row[f"{split} accuracy on accepted"] = None if accuracy is None else 100 * accuracy
        rows.append(row)
    config: dict[str, Any] = {"τ = t × w": st.column_config.NumberColumn(format="%.3f")}
    for split in results:
        config[f"{split} coverage"] = st.column_config.ProgressColumn(
            min_value=0, max_value=100, format="%.1f%%"
        )
        config[f"{split} accuracy on accepted"] = st.column_config.NumberColumn(format="%.1f%%")
    st.dataframe(rows, column_config=config, hide_index=True, width="stretch")


def fit_section(run: Run, rule: str, test_split: str, weights: tuple[float, ...], num_classes: int) -> None:
    st.subheader("Fit the global threshold to a target coverage")
    st.caption(
        f"The threshold is fitted on **val** (the tightest t whose val coverage reaches the target) and "
        f"reported on **{test_split}**, never tuned on test. Uses the current tolerance weights."
    )
    controls = st.columns([3, 1], vertical_alignment="bottom")
    controls[0].slider("Target coverage on val", 50, 100, step=1, format="%d%%", key=ss.KEY_TARGET)
    controls[1].button(
        "Fit on val", on_click=fit_on_val, args=(str(run.path), rule, weights, num_classes), type="primary"
    )
    show_message("fit")
    val_rank = ss.ranking(run, rule, "val", weights)
    most = len(val_rank.keys) / val_rank.scored.n
    if most < 1:
        st.caption(
            f"This rule can accept at most {most:.1%} of val (a sample it can never accept, such as a "
            "disagreement under the agreement rule, stays rejected), so higher targets are out of reach."
        )
    target = st.session_state[ss.KEY_TARGET] / 100
    targets = sorted({*selective.DEFAULT_TARGETS, target}, reverse=True)
    table = selective.coverage_table(val_rank, ss.scored(run, rule, test_split), targets)
    rows = [
        {
            "target coverage": 100 * row["target_coverage"],
            "t (fitted on val)": row["threshold"],
            "val coverage": 100 * row["val_coverage"],
            f"{test_split} coverage": 100 * row["test_coverage"],
            f"{test_split} accuracy on accepted": None
            if row["test_accuracy_on_accepted"] is None
            else 100 * row["test_accuracy_on_accepted"],
            f"{test_split} selective risk": None
            if row["test_selective_risk"] is None
            else 100 * row["test_selective_risk"],
            "reachable on val": row["reachable"],
        }
        for row in table
    ]
    percent = st.column_config.NumberColumn(format="%.1f%%")
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "target coverage": st.column_config.NumberColumn(format="%.0f%%"),
            "t (fitted on val)": st.column_config.NumberColumn(format="%.4f"),
            "val coverage": percent,
            f"{test_split} coverage": percent,
            f"{test_split} accuracy on accepted": percent,
            f"{test_split} selective risk": percent,
        },
    )


def sets_section(run: Run, rule: str, num_classes: int) -> None:
    st.subheader("Threshold sets")
    show_message("sets")
    save_col, load_col, io_col = st.columns(3, gap="large")
    with save_col:
        st.markdown("**Save the current settings to this run**")
        st.text_input("Name", key=ss.KEY_SAVE_NAME, placeholder="e.g. agree-90", max_chars=80)
        st.button("Save", on_click=save_set, args=(str(run.path), rule, num_classes))
    saved = run.threshold_sets()
    with load_col:
        st.markdown("**Saved in this run**")
        if not saved:
            st.caption("None yet. Saved sets also drive the accept/reject decision on **Try an image**.")
        else:
            if st.session_state.get(KEY_LOAD_NAME) not in saved:
                st.session_state[KEY_LOAD_NAME] = next(iter(saved))
            st.selectbox("Saved set", list(saved), key=KEY_LOAD_NAME)
            value = saved[st.session_state[KEY_LOAD_NAME]]
            target = value.get("target_coverage")
            st.caption(
                f"rule {value.get('rule')} · t = {value.get('global_threshold')} · fitted on "
                f"{value.get('fitted_on')}"
                + (f" for {target:.0%} coverage" if isinstance(target, float) else "")
                + f" · {value.get('created', '')}"
            )
            st.button("Load", on_click=load_set, args=(str(run.path), num_classes))
    with io_col:
        st.markdown("**Export or import as JSON**")
        thresholds = ss.current_thresholds(num_classes)
        fitted_on, target = ss.fit_provenance(thresholds)
        name = (
            st.session_state.get(ss.KEY_SAVE_NAME, "").strip() or f"{rule}-t{thresholds.global_threshold:.3f}"
        )
        exported = selective.ThresholdSet(name, rule, thresholds, fitted_on, target).to_json()
        st.download_button(
            "Export current settings",
            exported,
            file_name=f"{run.id}-{name}.json",
            mime="application/json",
            icon=":material/download:",
            on_click="ignore",
        )
        st.file_uploader(
            "Import a threshold set (JSON)",
            type=["json"],
            key=ss.KEY_IMPORT,
            on_change=import_set,
            args=(num_classes,),
        )


def render(run: Run) -> None:
    summary = common.dataset_summary(run)
    class_names: list[str] = summary["class_names"]
    num_classes = len(class_names)
    group_names: list[str] = summary.get("group_names") or []
    test_splits = [s for s in summary.get("test_splits", []) if s in run.prediction_splits()]
    if "val" not in run.prediction_splits() or not test_splits:
        st.warning(f"Run {run.id} has no saved predictions on val and a test split; nothing to tune.")
        return

    ss.init_state(num_classes)
    if st.session_state.get(ss.KEY_RULE) not in selective.RULES:
        st.session_state[ss.KEY_RULE] = "agreement"
    if st.session_state.get(KEY_TEST_SPLIT) not in test_splits:
        main = summary.get("main_test_split")
        st.session_state[KEY_TEST_SPLIT] = main if main in test_splits else test_splits[0]
    rule, test_split = st.session_state[ss.KEY_RULE], st.session_state[KEY_TEST_SPLIT]
    chart_keys = {name: ss.chart_key(name, run.id, rule, test_split) for name in ss.CHARTS}
    clicked = ss.apply_curve_click(list(chart_keys.values()), num_classes)
    if clicked is not None:
        st.toast(f"Global threshold set to {clicked:.4f} from the curve.")

    val_base, test_base = ss.scored(run, rule, "val"), ss.scored(run, rule, test_split)
    if val_base is None or test_base is None:
        st.warning(f"Run {run.id} lacks the predictions of both models on val or {test_split}.")
        return

    top = st.columns([1.6, 1, 1.6], gap="large")
    with top[0]:
        st.selectbox(
            "Rule", list(selective.RULES), format_func=lambda r: selective.RULES[r].label, key=ss.KEY_RULE
        )
        st.caption(selective.RULES[rule].definition)
    top[1].selectbox("Test split (reported, never tuned on)", test_splits, key=KEY_TEST_SPLIT)
    with top[2]:
        global_slider()
    per_class_controls(class_names)

    thresholds = ss.current_thresholds(num_classes)
    weights = tuple(float(w) for w in thresholds.weights)
    splits = {"val": val_base, test_split: test_base}
    results = {split: selective.evaluate(base, thresholds) for split, base in splits.items()}
    roles = {"val": "Validation: tune here", test_split: "Test: report"}
    for col, split in zip(st.columns(2, gap="medium", border=True), splits, strict=True):
        with col:
            metrics_panel(
                split, roles[split], results[split], ss.accept_all(splits[split]), bool(group_names)
            )
    st.caption(
        "Deltas are percentage points against accepting every sample (coverage 100%). "
        "Accuracy on accepted = 1 − selective risk; coverage = 1 − rejection rate."
    )

    figures = base_figures(str(run.path), ss.predictions_stamp(run, list(splits)), rule, test_split, weights)
    t = thresholds.global_threshold
    points = {
        "risk_coverage": [(f"{s}: current", r["coverage"], r["selective_risk"]) for s, r in results.items()],
        "accuracy_rejection": [
            (f"{s}: current", r["rejection_rate"], r["accuracy_on_accepted"]) for s, r in results.items()
        ],
        "agreement": [],
    }
    st.subheader("Trade-offs")
    st.caption(
        "Click a point on a curve to move the global threshold there; classes then follow it, so the current "
        "point (★) lies on the curve. Dashed: val, solid: test."
    )
    cells = [*st.columns(2, gap="large"), *st.columns(2, gap="large")]
    for cell, name in zip(cells, ss.CHARTS, strict=False):
        with cell:
            st.plotly_chart(
                with_points(figures[name], points[name], t),
                key=chart_keys[name],
                on_select="rerun",
                selection_mode="points",
                width="stretch",
                config={"displayModeBar": False},
            )
    with cells[3]:
        if group_names:
            st.plotly_chart(
                with_vline(figures["groups"], results[test_split]["coverage"]),
                width="stretch",
                config={"displayModeBar": False},
            )
            st.caption("Selection can widen the gaps between groups (Jones et al., ICLR 2021).")
        else:
            st.markdown("**Per class** (by true label): coverage and accuracy on the accepted samples")
            per_class_table(class_names, thresholds, results)
    if group_names:
        st.markdown("**Per class** (by true label): coverage and accuracy on the accepted samples")
        per_class_table(class_names, thresholds, results)

    st.divider()
    fit_section(run, rule, test_split, weights, num_classes)
    st.divider()
    sets_section(run, rule, num_classes)


st.header("Selective classification")
st.caption(
    "Accept a prediction only when the rule trusts it and reject the rest. Tune on validation; the test "
    "numbers beside them show what the thresholds are worth on data they were not chosen on."
)
chosen = common.run_picker()
if chosen is None:
    st.stop()
with common.friendly_errors("The selective-classification page"):
    render(chosen)
