"""Selective classification: accept a prediction only when the rule trusts it. Thresholds are tuned and
fitted on validation; test shows what they are worth. Only saved predictions are used: no model runs here.
Layout only: state and caches live in studio.selective_state, figures in studio.selective_figures,
callbacks in studio.selective_actions, tables and notes in studio.selective_tables."""

from __future__ import annotations

from typing import Any

import streamlit as st

from masktune_core import selective
from masktune_core.runs import Run
from studio import common, viz
from studio import selective_actions as act
from studio import selective_figures as figs
from studio import selective_state as ss
from studio import selective_tables as tables


def pp(value: float | None, reference: float | None) -> str | None:
    """A delta in percentage points for st.metric, or None when either side is undefined."""
    if value is None or reference is None:
        return None
    return f"{100 * (value - reference):+.1f} pp"


def show_message(where: str) -> None:
    message = ss.pop_message(where)
    if message is not None:
        kind, text = message
        getattr(st, kind)(text)


def global_slider() -> None:
    st.slider(
        "Global threshold t", 0.0, 1.0, step=ss.SLIDER_STEP, format="%.3f", key=ss.KEY_GLOBAL,
        help="Accept a sample predicted as class c iff the rule's confidence ≥ t_c × w_c; "
        "t_c is t unless the class has its own threshold.",
    )  # fmt: skip
    exact = ss.global_threshold()
    if exact != st.session_state[ss.KEY_GLOBAL]:
        st.caption(
            f"In use: t = {exact:.6f}, the exact value from the curve, fit or set; "
            "moving the slider replaces it."
        )


def per_class_controls(run: Run, rule: str, class_names: list[str]) -> None:
    num_classes = len(class_names)
    label = f"Per-class thresholds and tolerance weights ({num_classes} classes)"
    with st.expander(label, expanded=num_classes <= 3):
        st.caption(
            "Each class follows the global threshold unless **own** is on. The weight scales the class's "
            "threshold (τ = t × w): below 1 it is more tolerant of a hard class, as in the report."
        )
        st.button(
            "Fit weights on val", on_click=act.fit_weights, args=(str(run.path), rule, num_classes),
            help="w_c = the median val confidence of the samples the rule can accept and predicts as c, "
            "divided by the largest such median (1 for a class never predicted).",
        )  # fmt: skip
        show_message("weights")
        widths = [1.2, 0.6, 3, 1.1, 2.4]
        headers = ("class", "own", "threshold t_c", "weight w_c", "τ_c")
        for col, text in zip(st.columns(widths), headers, strict=True):
            col.caption(text)
        for c, name in enumerate(class_names):
            own = st.session_state[ss.key_own(c)]
            if not own:
                ss.follow_global(c)
            row = st.columns(widths, vertical_alignment="center")
            row[0].markdown(f"**{viz.md_escape(name)}**")
            row[1].toggle("own", key=ss.key_own(c), label_visibility="collapsed")
            row[2].slider(
                f"threshold for {name}", 0.0, 1.0, step=ss.SLIDER_STEP, format="%.3f", key=ss.key_class(c),
                disabled=not own, label_visibility="collapsed",
            )  # fmt: skip
            weight = row[3].number_input(
                f"weight for {name}", ss.WEIGHT_RANGE[0], ss.WEIGHT_RANGE[1], step=0.05, format="%.2f",
                key=ss.key_weight(c), label_visibility="collapsed",
            )  # fmt: skip
            t = ss.threshold_in_use(ss.key_class(c)) if own else ss.global_threshold()
            row[4].markdown(f"τ = {t * weight:.3f}")


def metrics_panel(
    split: str, role: str, result: dict[str, Any], reference: dict[str, Any], group_names: list[str]
) -> None:
    st.markdown(f"**{role}** · `{split}`")
    st.caption(f"{result['n_accepted']:,} of {result['n']:,} samples accepted")
    cells = [
        ("Accuracy on accepted", "accuracy_on_accepted", "normal", None),
        ("Selective risk", "selective_risk", "inverse", "error rate on the accepted samples"),
        ("Coverage", "coverage", "normal", "share of the split's samples accepted"),
        ("Rejection rate", "rejection_rate", "inverse", None),
        ("Agreement rate", "agreement_rate", "off",
         "share of all samples on which ERM and MaskTune predict the same class; no threshold changes it"),
    ]  # fmt: skip
    if group_names:
        cells.append(
            ("Worst-group accuracy", "worst_group_accuracy_on_accepted", "normal",
             "accuracy on the accepted samples of the worst group; undefined while a group is fully "
             "rejected (it has nothing accepted, and leaving it out would flatter the figure)")
        )  # fmt: skip
    for start in range(0, len(cells), 2):
        for col, (label, key, colour, help_text) in zip(
            st.columns(2), cells[start : start + 2], strict=False
        ):
            delta = None if colour == "off" else pp(result[key], reference[key])
            col.metric(label, common.pct(result[key]), delta, delta_color=colour, help=help_text)
    rejected = result.get("fully_rejected_groups") or []
    if rejected:
        names = [group_names[g] if g < len(group_names) else str(g) for g in rejected]
        st.caption(
            f"Fully rejected (coverage 0%): {', '.join(names)}, so the worst-group accuracy on accepted "
            "is undefined."
        )


def shortcut_section(split: str, notes: list[str], test_splits: list[str]) -> None:
    for note in notes:
        st.warning(note, icon=":material/warning:")
    others = [s for s in test_splits if s != split]
    if notes and others:
        st.button(
            f"Show {others[0]} instead", on_click=act.switch_test_split, args=(others[0],),
            help="The split without the shortcut's bias, where agreement means what it should.",
        )  # fmt: skip


def charts_section(
    run: Run,
    rule: str,
    test_split: str,
    thresholds: selective.Thresholds,
    results: dict[str, dict[str, Any]],
    class_names: list[str],
    group_names: list[str],
) -> None:
    splits = list(results)
    base = figs.base_figures(
        str(run.path), ss.predictions_stamp(run, splits), rule, test_split, tuple(thresholds.weights)
    )
    chart_keys = {name: ss.chart_key(name, run.id, rule, test_split) for name in ss.CHARTS}
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
                figs.with_points(base[name], points[name], thresholds.global_threshold),
                key=chart_keys[name], on_select="rerun", selection_mode="points", width="stretch",
                config={"displayModeBar": False},
            )  # fmt: skip
    table = (tables.per_class_rows(class_names, thresholds, results), tables.per_class_columns(splits))
    with cells[3]:
        if group_names:
            st.plotly_chart(
                figs.with_vline(base["groups"], results[test_split]["coverage"]),
                width="stretch", config={"displayModeBar": False},
            )  # fmt: skip
            st.caption("Selection can widen the gaps between groups (Jones et al., ICLR 2021).")
        else:
            st.markdown("**Per class** (by true label): coverage and accuracy on the accepted samples")
            st.dataframe(table[0], column_config=table[1], hide_index=True, width="stretch")
    if group_names:
        st.markdown("**Per class** (by true label): coverage and accuracy on the accepted samples")
        st.dataframe(table[0], column_config=table[1], hide_index=True, width="stretch")


def rules_section(run: Run, test_split: str, weights: tuple[float, ...]) -> None:
    st.subheader(f"Every rule's curve on {test_split}, comparable")
    summaries = ss.rule_summaries(run, test_split, weights)
    common_cov = next(iter(summaries.values()))["summary"].common_coverage
    st.dataframe(
        tables.rule_rows(summaries), column_config=tables.rule_columns(), hide_index=True, width="stretch"
    )
    st.caption(
        f"Values in % (lower is better), current weights; a = {common.pct(common_cov)}. 95% intervals: "
        "percentile bootstrap of the split, 1,000 resamples, seed 0. "
        + " ".join(f"**{name}**: {text}" for name, text in tables.METRIC_DEFINITIONS.items())
    )


def fit_section(
    run: Run, rule: str, test_split: str, weights: tuple[float, ...], num_classes: int, has_groups: bool
) -> None:
    st.subheader("Fit the thresholds on val")
    st.caption(
        f"Fitted on **val**, reported on **{test_split}**, never tuned on test; uses the current weights. "
        "A guaranteed fit follows SGR (Geifman & El-Yaniv, 2017): the thresholds it tries are bisected, and "
        "the Clopper–Pearson upper bound of the val risk, corrected for the number of thresholds tried (and "
        "of classes or groups bounded), must stay ≤ the target: with probability ≥ 1 − δ the true risk does."
    )
    kind = st.radio("Target", list(act.FIT_KINDS), format_func=act.FIT_KINDS.get, key=ss.KEY_FIT_KIND,
                    horizontal=True)  # fmt: skip
    controls = st.columns([3, 2, 2, 1], vertical_alignment="bottom")
    if kind == "coverage":
        controls[0].slider("Target coverage on val", 50, 100, step=1, format="%d%%", key=ss.KEY_TARGET)
    else:
        scopes = [s for s in selective.SCOPES if has_groups or s != "per_group"]
        if st.session_state[ss.KEY_FIT_SCOPE] not in scopes:
            st.session_state[ss.KEY_FIT_SCOPE] = "global"
        controls[0].radio("Bound", scopes, format_func=act.SCOPE_LABELS.get, key=ss.KEY_FIT_SCOPE,
                          horizontal=True)  # fmt: skip
        controls[1].number_input("Target selective risk (%)", 0.01, 99.99, step=0.5, format="%.2f",
                                 key=ss.KEY_TARGET_RISK)  # fmt: skip
        if kind == "guaranteed_risk":
            controls[2].number_input(
                "δ (1 − confidence)", 0.001, 0.5, step=0.01, format="%.3f", key=ss.KEY_DELTA
            )
    controls[3].button(
        "Fit on val", on_click=act.fit_on_val, args=(str(run.path), rule, weights, num_classes, test_split),
        type="primary",
    )  # fmt: skip
    show_message("fit")
    val_rank = ss.ranking(run, rule, "val", weights)
    most = len(val_rank.keys) / val_rank.scored.n
    if most < 1:
        st.caption(
            f"This rule can accept at most {most:.1%} of val (a sample it can never accept, such as a "
            "disagreement under the agreement rule, stays rejected), so higher coverages are out of reach."
        )
    target = st.session_state[ss.KEY_TARGET] / 100
    targets = sorted({*selective.DEFAULT_TARGETS, target}, reverse=True)
    rows = tables.coverage_rows(val_rank, ss.scored(run, rule, test_split), test_split, targets)
    st.dataframe(rows, hide_index=True, width="stretch", column_config=tables.coverage_columns(test_split))


def sets_section(run: Run, rule: str, num_classes: int) -> None:
    st.subheader("Threshold sets")
    show_message("sets")
    save_col, load_col, io_col = st.columns(3, gap="large")
    with save_col:
        st.markdown("**Save the current settings to this run**")
        st.text_input("Name", key=ss.KEY_SAVE_NAME, placeholder="e.g. agree-90", max_chars=80)
        st.button("Save", on_click=act.save_set, args=(str(run.path), rule, num_classes))
    saved = run.threshold_sets()
    with load_col:
        st.markdown("**Saved in this run**")
        if not saved:
            st.caption("None yet. Saved sets also drive the accept/reject decision on **Try an image**.")
        else:
            if st.session_state.get(ss.KEY_LOAD_NAME) not in saved:
                st.session_state[ss.KEY_LOAD_NAME] = next(iter(saved))
            st.selectbox("Saved set", list(saved), key=ss.KEY_LOAD_NAME)
            value = saved[st.session_state[ss.KEY_LOAD_NAME]]
            fit = value.get("fit") or {}
            how = f" for {fit.get('target')} {fit.get('value')}" if fit else ""
            st.caption(
                f"rule {value.get('rule')} · t = {value.get('global_threshold')} · fitted on "
                f"{value.get('fitted_on')}{how} · run {value.get('run_id') or 'not recorded'} · "
                f"{value.get('created', '')}"
            )
            st.button("Load", on_click=act.load_set, args=(str(run.path), num_classes))
    with io_col:
        st.markdown("**Export or import as JSON**")
        name = st.session_state.get(ss.KEY_SAVE_NAME, "").strip() or f"{rule}-t{ss.global_threshold():.3f}"
        st.download_button(
            "Export current settings", act.current_set(run.id, name, rule, num_classes).to_json(),
            file_name=f"{run.id}-{name}.json", mime="application/json", icon=":material/download:",
            on_click="ignore",
        )  # fmt: skip
        st.file_uploader(
            "Import a threshold set (JSON)", type=["json"], key=ss.KEY_IMPORT, on_change=act.import_set,
            args=(run.id, num_classes),
        )  # fmt: skip


def render(run: Run) -> None:
    summary = common.dataset_summary(run)
    class_names: list[str] = summary["class_names"]
    num_classes = len(class_names)
    group_names: list[str] = summary.get("group_names") or []
    test_splits = [s for s in summary.get("test_splits", []) if s in run.prediction_splits()]
    if "val" not in run.prediction_splits() or not test_splits:
        st.warning(f"Run {run.id} has no saved predictions on val and a test split; nothing to tune.")
        return

    ss.scope_to_run(run.id)
    ss.init_state(num_classes)
    if st.session_state.get(ss.KEY_RULE) not in selective.RULES:
        st.session_state[ss.KEY_RULE] = "agreement"
    if st.session_state.get(ss.KEY_TEST_SPLIT) not in test_splits:
        main = summary.get("main_test_split")
        st.session_state[ss.KEY_TEST_SPLIT] = main if main in test_splits else test_splits[0]
    rule, test_split = st.session_state[ss.KEY_RULE], st.session_state[ss.KEY_TEST_SPLIT]
    chart_keys = [ss.chart_key(name, run.id, rule, test_split) for name in ss.CHARTS]
    clicked = ss.apply_curve_click(chart_keys, num_classes)
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
    top[1].selectbox("Test split (reported, never tuned on)", test_splits, key=ss.KEY_TEST_SPLIT)
    with top[2]:
        global_slider()
    per_class_controls(run, rule, class_names)

    thresholds = ss.current_thresholds(num_classes)
    splits = {"val": val_base, test_split: test_base}
    results = {split: selective.evaluate(base, thresholds) for split, base in splits.items()}
    references = {split: ss.accept_all(base) for split, base in splits.items()}
    notes = tables.shortcut_notes(test_split, rule, results[test_split], references[test_split], test_base)
    shortcut_section(test_split, notes, test_splits)
    roles = {"val": "Validation: tune here", test_split: "Test: report"}
    for col, split in zip(st.columns(2, gap="medium", border=True), splits, strict=True):
        with col:
            metrics_panel(split, roles[split], results[split], references[split], group_names)
            if split == test_split:
                st.caption(tables.interval_caption(selective.bootstrap_point(test_base, thresholds)))
    st.caption(
        "Deltas are percentage points against accepting every sample (coverage 100%). "
        "Accuracy on accepted = 1 − selective risk; coverage = 1 − rejection rate."
    )
    charts_section(run, rule, test_split, thresholds, results, class_names, group_names)
    weights = tuple(float(w) for w in thresholds.weights)
    st.divider()
    rules_section(run, test_split, weights)
    st.divider()
    fit_section(run, rule, test_split, weights, num_classes, bool(group_names))
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
