"""The Selective page's callbacks: fits on validation, tolerance weights, threshold sets, split switch.

Each runs before the next script run creates the widgets, so it may set their session-state values, and
leaves a one-time message for the page (``selective_state.show_message``).
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from masktune_core import selective
from masktune_core.errors import MaskTuneError
from masktune_core.runs import Run
from studio import selective_state as ss

MAX_IMPORT_BYTES = 1_000_000
FIT_KINDS = {
    "coverage": "a coverage",
    "risk": "a risk",
    "guaranteed_risk": "a risk, with a guarantee",
}
SCOPE_LABELS = {"global": "one global threshold", "per_class": "per class", "per_group": "worst group"}


def _pct(value: float | None, digits: int = 1) -> str:
    return "undefined" if value is None else f"{100 * value:.{digits}f}%"


def fit_on_val(
    run_path: str, rule: str, weights: tuple[float, ...], num_classes: int, test_split: str
) -> None:
    """Fit to the target the user chose (coverage, risk, or risk with a guarantee) on val; report on test."""
    run = Run(Path(run_path))
    ranking = ss.ranking(run, rule, "val", weights)
    if st.session_state[ss.KEY_FIT_KIND] == "coverage":
        _fit_coverage(run, rule, ranking, num_classes)
        return
    guaranteed = st.session_state[ss.KEY_FIT_KIND] == "guaranteed_risk"
    target = st.session_state[ss.KEY_TARGET_RISK] / 100
    delta = float(st.session_state[ss.KEY_DELTA]) if guaranteed else None
    scope = st.session_state[ss.KEY_FIT_SCOPE]
    try:
        fit = selective.fit_risk(ranking, target, delta, scope)
    except MaskTuneError as err:
        ss.show_message("fit", "error", str(err))
        return
    ss.set_thresholds(fit.thresholds)
    record = {"target": st.session_state[ss.KEY_FIT_KIND], "value": target, **fit.to_dict()}
    ss.record_fit(run.id, rule, fit.thresholds, record, None)
    report = selective.check_on_test(fit, ss.scored(run, rule, test_split))
    bound = "" if delta is None else f", upper bound {_pct(fit.val_bound, 2)} at 1 − δ = {1 - delta:.0%}"
    found = (
        f"Fitted on val ({SCOPE_LABELS[scope]}): coverage {_pct(fit.val_coverage)}, selective risk "
        f"{_pct(fit.val_risk, 2)}{bound}. On {test_split}: coverage {_pct(report['coverage'])}, risk "
        f"{_pct(report['selective_risk'], 2)}: the target of {target:.2%} "
        + ("held." if report["held"] else "was missed.")
    )
    if not fit.feasible:
        ss.show_message(
            "fit",
            "warning",
            f"No threshold reaches a risk of {target:.2%} on val"
            + ("" if delta is None else f" with confidence {1 - delta:.0%}")
            + "; the strictest one (t = 1) is set. "
            + found,
        )
    else:
        ss.show_message("fit", "success" if report["held"] else "warning", found)


def _fit_coverage(run: Run, rule: str, ranking: selective.Ranking, num_classes: int) -> None:
    target = st.session_state[ss.KEY_TARGET] / 100
    fit = selective.fit_global_threshold(ranking, target)
    ss.set_global(fit.threshold, num_classes)
    thresholds = selective.Thresholds.build(num_classes, ss.global_threshold(), weights=ranking.weights)
    ss.record_fit(run.id, rule, thresholds, {"target": "coverage", "value": target}, target)
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


def fit_weights(run_path: str, rule: str, num_classes: int) -> None:
    """Set every class's tolerance weight to the one fitted on val (rule: ``fit_class_weights``)."""
    weights = selective.fit_class_weights(ss.scored(Run(Path(run_path)), rule, "val"))
    for c, w in enumerate(weights):
        st.session_state[ss.key_weight(c)] = min(max(float(w), ss.WEIGHT_RANGE[0]), ss.WEIGHT_RANGE[1])
    shown = ", ".join(f"{w:.2f}" for w in weights)
    ss.show_message(
        "weights",
        "success",
        f"Weights fitted on val: {shown}. Rule: w_c = the median val confidence of the samples the rule "
        "can accept and predicts as c, over the largest such median (1 for a class never predicted).",
    )


def switch_test_split(split: str) -> None:
    st.session_state[ss.KEY_TEST_SPLIT] = split


def save_set(run_path: str, rule: str, num_classes: int) -> None:
    name = st.session_state.get(ss.KEY_SAVE_NAME, "").strip()
    if not name:
        ss.show_message("sets", "error", "Give the threshold set a name first.")
        return
    run = Run(Path(run_path))
    try:
        threshold_set = current_set(run.id, name, rule, num_classes)
        replaced = name in run.threshold_sets()
        run.save_threshold_set(name, threshold_set.to_dict())
    except MaskTuneError as err:
        ss.show_message("sets", "error", str(err))
        return
    st.session_state[ss.KEY_LOAD_NAME] = name
    ss.show_message(
        "sets", "success", f"Saved {name!r} to run {run.id}" + (" (replaced)." if replaced else ".")
    )


def current_set(run_id: str, name: str, rule: str, num_classes: int) -> selective.ThresholdSet:
    """The tuner's current settings as a threshold set, with the provenance ``fit_provenance`` grants."""
    thresholds = ss.current_thresholds(num_classes)
    fitted_on, target, fit = ss.fit_provenance(run_id, rule, thresholds)
    return selective.ThresholdSet(name, rule, thresholds, fitted_on, target, run_id=run_id, fit=fit)


def load_set(run_path: str, num_classes: int) -> None:
    run = Run(Path(run_path))
    name = st.session_state.get(ss.KEY_LOAD_NAME)
    value = run.threshold_sets().get(name)
    if value is None:
        ss.show_message("sets", "error", f"Threshold set {name!r} is no longer in this run.")
        return
    try:
        ss.apply_set(selective.ThresholdSet.from_json(json.dumps(value), num_classes), run.id)
    except MaskTuneError as err:
        ss.show_message("sets", "error", f"Threshold set {name!r} cannot be loaded: {err}")
        return
    ss.show_message("sets", "success", f"Loaded {name!r}.")


def import_set(run_id: str, num_classes: int) -> None:
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
    ss.apply_set(threshold_set, run_id)
    ss.show_message("sets", "success", f"Imported {threshold_set.name!r} from {upload.name}.")
