"""The threshold tuner's state and cached computations (the selective page stays a thin script).

Widget values live in ``st.session_state`` under the keys below, all starting with ``sel_`` and all
belonging to one run: ``scope_to_run`` drops them when the page shows another run. Actions that change them
(load a saved set, import a file, fit on val, click a curve; see studio.selective_actions) run before the
widgets are created: as button or uploader callbacks, or, for a curve click, from ``apply_curve_click`` at
the top of the script, which reads the chart's selection from session state so a click in the browser and
a selection injected by a test take the same path. A fit is remembered with the run, rule, weights and
thresholds it produced (``record_fit``), and a saved set claims "fitted on val" only while all still match.

Caching follows masktune_core.selective's advice: ``score`` once per (run, rule, split), ``rank``, the
curves and the bootstrapped summaries once per (run, rule, split, weights), and only ``evaluate`` and
``bootstrap_point`` per slider move. The cached objects are read-only, so they are shared
(``st.cache_resource``) rather than copied on every rerun.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from masktune_core import selective
from masktune_core.errors import ConfigError
from masktune_core.runs import Run

KEY_RULE = "sel_rule"
KEY_GLOBAL = "sel_global"
# A clicked curve point, a fit or a loaded set gives thresholds finer than the sliders' 0.001 steps, and
# the browser snaps a slider's value to its steps. The exact value is kept beside the slider's key (with
# EXACT_SUFFIX) and used for as long as the slider still shows it rounded, so a curve point's coverage and
# a fitted coverage are reproduced exactly.
EXACT_SUFFIX = "_exact"
SLIDER_STEP = 0.001
KEY_TARGET = "sel_target"
KEY_SAVE_NAME = "sel_save_name"
KEY_IMPORT = "sel_import"
KEY_MESSAGE = "sel_message"  # + "_<where>": (kind, text) shown once after an action
# The last fit on validation, with everything it depends on (see ``record_fit``); None after a manual change.
KEY_FIT = "sel_fit"
KEY_RUN = "sel_run"  # the run the tuner's state belongs to: every "sel_" key is dropped when it changes
KEY_FIT_KIND = "sel_fit_kind"
KEY_FIT_SCOPE = "sel_fit_scope"
KEY_TARGET_RISK = "sel_target_risk"  # percent
KEY_DELTA = "sel_delta"
KEY_TEST_SPLIT = "sel_test_split"
KEY_LOAD_NAME = "sel_load_name"
PREFIX = "sel_"
KEY_LAST_CLICK = "sel_last_click"
DEFAULT_THRESHOLD = 0.5
WEIGHT_RANGE = (0.05, 5.0)
CHARTS = ("risk_coverage", "accuracy_rejection", "agreement")


def key_own(c: int) -> str:
    return f"sel_own_{c}"


def key_class(c: int) -> str:
    return f"sel_t_{c}"


def key_weight(c: int) -> str:
    return f"sel_w_{c}"


def chart_key(chart: str, run_id: str, rule: str, test_split: str) -> str:
    """One widget per (chart, run, rule, test split), so a stale selection never outlives its curve."""
    return f"sel_chart_{chart}_{run_id}_{rule}_{test_split}"


# ---------------------------------------------------------------------------------------- cached data
def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def predictions_stamp(run: Run, splits: Sequence[str]) -> tuple[float, ...]:
    """The mtimes of the splits' prediction files: a cache key that changes when a run is re-evaluated."""
    return tuple(_mtime(run.predictions_path(split)) for split in splits)


def scored(run: Run, rule: str, split: str) -> selective.Scored | None:
    """The rule applied to the split's saved predictions; None if the run has none with both models."""
    path = run.predictions_path(split)
    return _scored(str(run.path), _mtime(path), rule, split)


@st.cache_resource(show_spinner=False, max_entries=64)
def _scored(run_path: str, mtime: float, rule: str, split: str) -> selective.Scored | None:
    preds = Run(Path(run_path)).predictions(split)
    if preds is None or "probs_erm" not in preds or "probs_masktune" not in preds:
        return None
    return selective.score(
        rule, preds["probs_erm"], preds["probs_masktune"], preds["label"], preds.get("group")
    )


def ranking(run: Run, rule: str, split: str, weights: tuple[float, ...]) -> selective.Ranking:
    path = run.predictions_path(split)
    return _ranking(str(run.path), _mtime(path), rule, split, weights)


@st.cache_resource(show_spinner=False, max_entries=64)
def _ranking(
    run_path: str, mtime: float, rule: str, split: str, weights: tuple[float, ...]
) -> selective.Ranking:
    base = _scored(run_path, mtime, rule, split)
    return selective.rank(base, weights)


def curve(run: Run, rule: str, split: str, weights: tuple[float, ...]) -> selective.Curve:
    path = run.predictions_path(split)
    return _curve(str(run.path), _mtime(path), rule, split, weights)


@st.cache_resource(show_spinner=False, max_entries=64)
def _curve(run_path: str, mtime: float, rule: str, split: str, weights: tuple[float, ...]) -> selective.Curve:
    return selective.risk_coverage(_ranking(run_path, mtime, rule, split, weights))


def group_curves(run: Run, rule: str, split: str, weights: tuple[float, ...]) -> dict[int, selective.Curve]:
    path = run.predictions_path(split)
    return _group_curves(str(run.path), _mtime(path), rule, split, weights)


@st.cache_resource(show_spinner=False, max_entries=32)
def _group_curves(
    run_path: str, mtime: float, rule: str, split: str, weights: tuple[float, ...]
) -> dict[int, selective.Curve]:
    return selective.risk_coverage_by(_ranking(run_path, mtime, rule, split, weights), "group")


def rule_summaries(run: Run, split: str, weights: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    """Every rule's curve summary on ``split`` with the current weights, each with its bootstrap
    intervals, and the common coverage range they share: {rule: {"summary", "intervals"}}."""
    path = run.predictions_path(split)
    return _rule_summaries(str(run.path), _mtime(path), split, weights)


@st.cache_resource(show_spinner="Bootstrapping the curves (1,000 resamples)…", max_entries=16)
def _rule_summaries(
    run_path: str, mtime: float, split: str, weights: tuple[float, ...]
) -> dict[str, dict[str, Any]]:
    # Off the slider path: it depends on the weights, never on the thresholds.
    rankings = {rule: _ranking(run_path, mtime, rule, split, weights) for rule in selective.RULES}
    common = selective.common_coverage(list(rankings.values()))
    upto = common if common > 0 else None
    return {
        rule: {
            "summary": selective.summarize(r, upto),
            "intervals": selective.bootstrap_summary(r, upto),
        }
        for rule, r in rankings.items()
    }


def accept_all(base: selective.Scored) -> dict[str, Any]:
    """The metrics of accepting every sample (threshold 0, no agreement needed): the deltas' reference."""
    accuracy = float(base.correct.mean())
    groups = []
    if base.group_index is not None:
        for g in range(len(base.group_ids)):
            members = base.group_index == g
            groups.append(float(base.correct[members].mean()))
    return {
        "accuracy_on_accepted": accuracy,
        "coverage": 1.0,
        "rejection_rate": 0.0,
        "selective_risk": 1.0 - accuracy,
        "worst_group_accuracy_on_accepted": min(groups) if groups else None,
    }


# ---------------------------------------------------------------------------------------- widget state
def scope_to_run(run_id: str) -> None:
    """Start the tuner afresh when the page shows another run: thresholds, weights, a fit or a chart
    selection made for one run must not carry over, unseen, to the next one."""
    state = st.session_state
    if state.get(KEY_RUN) == run_id:
        return
    for key in [k for k in state if isinstance(k, str) and k.startswith(PREFIX)]:
        del state[key]
    state[KEY_RUN] = run_id


def init_state(num_classes: int) -> None:
    """Give every tuner widget its starting value once (widgets are then created without ``value=``)."""
    st.session_state.setdefault(KEY_GLOBAL, DEFAULT_THRESHOLD)
    st.session_state.setdefault(KEY_TARGET, 90)  # percent, as the slider shows it
    st.session_state.setdefault(KEY_TARGET_RISK, 2.0)  # percent
    st.session_state.setdefault(KEY_DELTA, 0.05)
    st.session_state.setdefault(KEY_FIT_KIND, "coverage")
    st.session_state.setdefault(KEY_FIT_SCOPE, "global")
    st.session_state.setdefault(KEY_FIT, None)
    for c in range(num_classes):
        st.session_state.setdefault(key_own(c), False)
        st.session_state.setdefault(key_class(c), st.session_state[KEY_GLOBAL])
        st.session_state.setdefault(key_weight(c), 1.0)


def threshold_in_use(key: str) -> float:
    """The threshold behind slider ``key``: its exact value while the slider still shows it rounded."""
    shown, exact = st.session_state[key], st.session_state.get(key + EXACT_SUFFIX)
    if exact is not None and math.isclose(shown, _on_slider(exact), abs_tol=SLIDER_STEP / 100):
        return exact
    return shown


def global_threshold() -> float:
    return threshold_in_use(KEY_GLOBAL)


def _on_slider(value: float) -> float:
    return round(round(value / SLIDER_STEP) * SLIDER_STEP, 3)


def follow_global(c: int) -> None:
    """Show the global threshold on class c's slider while the class has no threshold of its own."""
    st.session_state[key_class(c)] = st.session_state[KEY_GLOBAL]
    st.session_state.pop(key_class(c) + EXACT_SUFFIX, None)


def _set_exact(key: str, threshold: float) -> None:
    value = min(max(float(threshold), 0.0), 1.0)
    st.session_state[key + EXACT_SUFFIX] = value
    st.session_state[key] = _on_slider(value)


def current_thresholds(num_classes: int) -> selective.Thresholds:
    state = st.session_state
    return selective.Thresholds.build(
        num_classes,
        global_threshold(),
        [threshold_in_use(key_class(c)) if state[key_own(c)] else None for c in range(num_classes)],
        [state[key_weight(c)] for c in range(num_classes)],
    )


def set_global(threshold: float, num_classes: int) -> None:
    """Move the global threshold (clamped to [0, 1]) and let every class follow it, so the operating point
    lies on the curves, which are drawn along the global threshold."""
    _set_exact(KEY_GLOBAL, threshold)
    for c in range(num_classes):
        st.session_state[key_own(c)] = False


def set_thresholds(thresholds: selective.Thresholds) -> None:
    """Put thresholds (global, overrides and weights) into the widgets, exact values kept."""
    _set_exact(KEY_GLOBAL, thresholds.global_threshold)
    for c, (own, weight) in enumerate(zip(thresholds.per_class, thresholds.weights, strict=True)):
        st.session_state[key_own(c)] = own is not None
        _set_exact(key_class(c), thresholds.global_threshold if own is None else own)
        st.session_state[key_weight(c)] = min(max(weight, WEIGHT_RANGE[0]), WEIGHT_RANGE[1])


def record_fit(
    run_id: str,
    rule: str,
    thresholds: selective.Thresholds,
    fit: dict[str, Any],
    target_coverage: float | None,
) -> None:
    """Remember a fit on val with everything it depends on: the run, the rule, the weights and the
    thresholds it produced. A saved set says "fitted on val" only while all of them still match."""
    st.session_state[KEY_FIT] = {
        "run_id": run_id,
        "rule": rule,
        "thresholds": thresholds,
        "fit": fit,
        "target_coverage": target_coverage,
    }


def apply_set(threshold_set: selective.ThresholdSet, run_id: str) -> None:
    """Put a saved or imported set into the widgets: rule, global threshold, overrides and weights.

    Its fit on val is kept as this run's only when the set says it was fitted on val of this very run."""
    st.session_state[KEY_RULE] = threshold_set.rule
    set_thresholds(threshold_set.thresholds)
    st.session_state[KEY_FIT] = None
    if threshold_set.fitted_on == "val" and threshold_set.run_id == run_id:
        fit = threshold_set.fit
        if fit is None and threshold_set.target_coverage is not None:
            fit = {"target": "coverage", "value": threshold_set.target_coverage}
        if fit is not None:
            record_fit(
                run_id, threshold_set.rule, threshold_set.thresholds, fit, threshold_set.target_coverage
            )


def _same(a: selective.Thresholds, b: selective.Thresholds) -> bool:
    def close(x: float | None, y: float | None) -> bool:
        return (x is None) == (y is None) and (x is None or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12))

    pairs = [(a.global_threshold, b.global_threshold), *zip(a.per_class, b.per_class, strict=True)]
    pairs += list(zip(a.weights, b.weights, strict=True))
    return a.num_classes == b.num_classes and all(close(x, y) for x, y in pairs)


def fit_provenance(
    run_id: str, rule: str, thresholds: selective.Thresholds
) -> tuple[str, float | None, dict[str, Any] | None]:
    """(fitted_on, target_coverage, fit) for saving: "val" with the fit while the run, the rule, the
    weights and every threshold are exactly the last fit's; "manual" (no fit) once any of them changed."""
    last = st.session_state.get(KEY_FIT)
    if (
        last is not None
        and last["run_id"] == run_id
        and last["rule"] == rule
        and _same(last["thresholds"], thresholds)
    ):
        return "val", last["target_coverage"], last["fit"]
    return "manual", None, None


def show_message(where: str, kind: str, text: str) -> None:
    """Keep a message for the next run to show once at ``where`` (kind: success, warning or error)."""
    st.session_state[f"{KEY_MESSAGE}_{where}"] = (kind, text)


def pop_message(where: str) -> tuple[str, str] | None:
    return st.session_state.pop(f"{KEY_MESSAGE}_{where}", None)


# ---------------------------------------------------------------------------------------- curve clicks
def _point_threshold(point: dict[str, Any]) -> float | None:
    custom = point.get("customdata")
    if isinstance(custom, list | tuple):
        custom = custom[0] if custom else None
    try:
        value = float(custom)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def apply_curve_click(keys: Sequence[str], num_classes: int) -> float | None:
    """If one of the charts ``keys`` holds a point selection not applied yet, move the global threshold to
    the point's threshold (its customdata) and return it. Call before the threshold widgets exist."""
    for key in keys:
        event = st.session_state.get(key)
        try:
            points = event["selection"]["points"]
        except (KeyError, TypeError):
            continue
        if not points:
            continue
        threshold = _point_threshold(points[0])
        if threshold is None:
            continue
        signature = (key, points[0].get("curve_number"), points[0].get("point_index"), threshold)
        if st.session_state.get(KEY_LAST_CLICK) == signature:
            continue
        st.session_state[KEY_LAST_CLICK] = signature
        set_global(threshold, num_classes)
        st.session_state[KEY_FIT] = None
        return min(max(threshold, 0.0), 1.0)
    return None


def parse_import(data: bytes, num_classes: int) -> selective.ThresholdSet:
    """A threshold set from an uploaded JSON file; ConfigError (naming the field) when it does not fit."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("threshold_set", "the file is not UTF-8 text (expected JSON)") from None
    return selective.ThresholdSet.from_json(text, num_classes)
