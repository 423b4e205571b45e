"""The selective-classification page (AppTest): metrics, sliders, curve clicks, fitting, threshold sets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from masktune_core import selective
from masktune_core.errors import ConfigError
from masktune_core.runs import Run, RunStore, write_json
from studio import common
from studio import selective_state as ss
from tests.apptest_pages import render_page_script

pytestmark = pytest.mark.usefixtures("fresh_caches")


def selective_page(**query: str) -> AppTest:
    return render_page_script("selective", **query)


def shown(at: AppTest) -> dict[str, list[str]]:
    """Metric label -> values in page order (val first, then test)."""
    values: dict[str, list[str]] = {}
    for metric in at.metric:
        values.setdefault(metric.label, []).append(metric.value)
    return values


def expected(run: Run, split: str, thresholds: selective.Thresholds, rule: str = "agreement") -> dict:
    preds = run.predictions(split)
    scored = selective.score(
        rule, preds["probs_erm"], preds["probs_masktune"], preds["label"], preds.get("group")
    )
    return selective.evaluate(scored, thresholds)


def only_run(store: RunStore) -> Run:
    return store.list()[0]


def test_empty_store_explains_what_to_do(empty_store: RunStore) -> None:
    at = selective_page()
    assert not at.exception
    assert any("No run in state done" in i.value for i in at.info)
    assert not at.metric


def test_metrics_on_val_and_test_match_the_engine(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    assert not at.exception and not at.error
    test_split = common.dataset_summary(run)["main_test_split"]
    thresholds = selective.Thresholds.build(2, ss.DEFAULT_THRESHOLD)
    values = shown(at)
    for position, split in enumerate(("val", test_split)):
        result = expected(run, split, thresholds)
        assert values["Coverage"][position] == common.pct(result["coverage"])
        assert values["Accuracy on accepted"][position] == common.pct(result["accuracy_on_accepted"])
        assert values["Agreement rate"][position] == common.pct(result["agreement_rate"])
    assert len(at.get("plotly_chart")) == 4  # three trade-off curves and the per-group curves


def val_curve(run: Run) -> selective.Curve:
    preds = run.predictions("val")
    scored = selective.score("agreement", preds["probs_erm"], preds["probs_masktune"], preds["label"])
    return selective.risk_coverage(selective.rank(scored))


def test_global_slider_changes_the_metrics(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    before = shown(at)["Coverage"][0]
    curve = val_curve(run)
    # The middle of the curve accepts fewer samples than t = 0.5, which (K = 2) accepts every agreement.
    middle = len(curve.threshold) // 2
    at.slider(key=ss.KEY_GLOBAL).set_value(float(curve.threshold[middle])).run()
    after = shown(at)["Coverage"][0]
    assert after == common.pct(curve.coverage[middle])
    assert after != before


def test_per_class_threshold_and_weight_change_the_metrics(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    at.toggle(key=ss.key_own(1)).set_value(True).run()
    at.slider(key=ss.key_class(1)).set_value(0.99).run()
    at.number_input(key=ss.key_weight(0)).set_value(0.5).run()
    thresholds = selective.Thresholds.build(2, ss.DEFAULT_THRESHOLD, [None, 0.99], [0.5, 1.0])
    assert shown(at)["Coverage"][0] == common.pct(expected(run, "val", thresholds)["coverage"])


def test_curve_selection_sets_the_global_threshold(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    test_split = common.dataset_summary(run)["main_test_split"]
    curve = val_curve(run)
    point = len(curve.threshold) // 3
    t = float(curve.threshold[point])
    key = ss.chart_key("risk_coverage", run.id, "agreement", test_split)
    at.session_state[key] = {
        "selection": {
            "points": [{"curve_number": 0, "point_index": point, "x": 0.5, "y": 0.1, "customdata": [t]}],
            "point_indices": [point],
            "box": [],
            "lasso": [],
        }
    }
    at.run()
    assert not at.exception
    # The slider shows the point's threshold on its 0.001 grid; the exact value stays in use, so the
    # clicked point's coverage is reproduced exactly, as the curve promises.
    assert at.slider(key=ss.KEY_GLOBAL).value == pytest.approx(t, abs=5e-4)
    assert shown(at)["Coverage"][0] == common.pct(curve.coverage[point])

    # Moving the slider afterwards is not undone by the selection that is still in the chart's state.
    at.slider(key=ss.KEY_GLOBAL).set_value(0.0).run()
    assert at.slider(key=ss.KEY_GLOBAL).value == 0.0


def test_fit_on_val_sets_the_fitted_threshold(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    at.slider(key=ss.KEY_TARGET).set_value(60).run()
    next(b for b in at.button if b.label == "Fit on val").click().run()
    preds = run.predictions("val")
    scored = selective.score("agreement", preds["probs_erm"], preds["probs_masktune"], preds["label"])
    fit = selective.fit_global_threshold(selective.rank(scored), 0.6)
    assert at.slider(key=ss.KEY_GLOBAL).value == pytest.approx(fit.threshold, abs=5e-4)
    assert shown(at)["Coverage"][0] == common.pct(fit.coverage)
    assert any("on val" in m.value for m in [*at.success, *at.warning])
    assert at.dataframe  # the coverage table, fitted on val and reported on test


def test_save_load_and_reject_bad_names(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    at.slider(key=ss.KEY_GLOBAL).set_value(0.7).run()
    at.text_input(key=ss.KEY_SAVE_NAME).set_value("agree-70").run()
    next(b for b in at.button if b.label == "Save").click().run()
    saved = run.threshold_sets()
    assert saved["agree-70"]["global_threshold"] == pytest.approx(0.7)
    assert saved["agree-70"]["fitted_on"] == "manual"

    at.text_input(key=ss.KEY_SAVE_NAME).set_value("../escape").run()
    next(b for b in at.button if b.label == "Save").click().run()
    assert any("not allowed" in e.value for e in at.error)
    assert set(run.threshold_sets()) == {"agree-70"}

    product = selective.ThresholdSet("product-set", "product", selective.Thresholds.build(2, 0.6))
    run.save_threshold_set("product-set", json.loads(product.to_json()))
    at.run()
    at.selectbox(key="sel_load_name").set_value("product-set").run()
    next(b for b in at.button if b.label == "Load").click().run()
    assert at.selectbox(key=ss.KEY_RULE).value == "product"
    assert at.slider(key=ss.KEY_GLOBAL).value == pytest.approx(0.6)


def test_import_json_applies_a_set_and_reports_a_bad_file(finished_store: RunStore) -> None:
    at = selective_page()
    good = selective.ThresholdSet(
        "imported", "softmax_masktune", selective.Thresholds.build(2, 0.8, [None, 0.9], [1.0, 0.5])
    )
    at.file_uploader(key=ss.KEY_IMPORT).set_value(
        ("set.json", good.to_json().encode(), "application/json")
    ).run()
    assert not at.exception
    assert at.selectbox(key=ss.KEY_RULE).value == "softmax_masktune"
    assert at.slider(key=ss.KEY_GLOBAL).value == pytest.approx(0.8)
    assert at.toggle(key=ss.key_own(1)).value is True
    assert at.number_input(key=ss.key_weight(1)).value == pytest.approx(0.5)

    wrong = json.loads(good.to_json())
    wrong["per_class"] = [None, None, None]
    at.file_uploader(key=ss.KEY_IMPORT).set_value(
        ("bad.json", json.dumps(wrong).encode(), "application/json")
    )
    at.run()
    assert any("bad.json cannot be imported: per_class" in e.value for e in at.error)


def test_parse_import_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="threshold_set"):
        ss.parse_import(b"\xff\xfe not text", 2)
    with pytest.raises(ConfigError, match="threshold_set"):
        ss.parse_import(b"{not json", 2)
    with pytest.raises(ConfigError, match="rule"):
        data = json.loads(
            selective.ThresholdSet("x", "agreement", selective.Thresholds.build(2, 0.5)).to_json()
        )
        data["rule"] = "nonsense"
        ss.parse_import(json.dumps(data).encode(), 2)


def test_deep_link_selects_the_run(finished_store: RunStore) -> None:
    original = only_run(finished_store)
    shutil.copytree(original.path, finished_store.root / "zzz-copy")
    at = selective_page(run=original.id)
    assert at.selectbox(key="pick_run").value == original.id
    assert at.metric


# ------------------------------------------------------------------------------ shortcut, scope, provenance


def click(at: AppTest, label: str) -> AppTest:
    return next(b for b in at.button if b.label == label).click().run()


def test_shared_shortcut_is_explained_with_a_switch_to_the_unbiased_split(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    # Make test_biased say what the demo run's does: ERM always follows the shortcut to the wrong class;
    # MaskTune is right on 40% of the samples, so every agreement is a shared wrong answer.
    preds = run.predictions("test_biased")
    n = len(preds["label"])
    rows = np.arange(n)

    def confident(classes: np.ndarray) -> np.ndarray:
        probs = np.full_like(preds["probs_erm"], 0.05)
        probs[rows, classes] = 0.95
        return probs

    wrong = 1 - preds["label"]
    masktune = np.where(rows % 5 < 2, preds["label"], wrong)
    run.save_predictions(
        "test_biased", {**preds, "probs_erm": confident(wrong), "probs_masktune": confident(masktune)}
    )
    at = selective_page()
    assert at.selectbox(key=ss.KEY_TEST_SPLIT).value == "test_biased"
    notes = " ".join(w.value for w in at.warning)
    assert "share a shortcut" in notes and "below" in notes
    click(at, "Show test_original instead")
    assert at.selectbox(key=ss.KEY_TEST_SPLIT).value == "test_original"
    assert not any("**test_biased**" in w.value for w in at.warning)


def test_tuner_state_does_not_carry_over_to_another_run(finished_store: RunStore) -> None:
    original = only_run(finished_store)
    shutil.copytree(original.path, finished_store.root / "zzz-copy")
    copy = finished_store.get("zzz-copy")
    write_json(copy.file("config.json"), {**copy.config(), "name": "copy"})  # AppTest picks by label
    at = selective_page()
    at.number_input(key=ss.key_weight(0)).set_value(0.5).run()
    at.slider(key=ss.KEY_GLOBAL).set_value(0.8).run()
    picker = at.selectbox(key="pick_run")
    other = "zzz-copy" if picker.value == original.id else original.id
    picker.set_value(other).run()
    assert not at.exception and at.session_state[ss.KEY_RUN] == other
    assert at.number_input(key=ss.key_weight(0)).value == 1.0
    assert at.slider(key=ss.KEY_GLOBAL).value == ss.DEFAULT_THRESHOLD


def save_as(at: AppTest, name: str) -> None:
    at.text_input(key=ss.KEY_SAVE_NAME).set_value(name).run()
    click(at, "Save")


def test_a_fit_is_claimed_only_for_its_own_run_rule_weights_and_thresholds(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    at.slider(key=ss.KEY_TARGET).set_value(60).run()
    click(at, "Fit on val")
    save_as(at, "fitted")
    saved = run.threshold_sets()["fitted"]
    assert saved["fitted_on"] == "val" and saved["run_id"] == run.id and saved["target_coverage"] == 0.6
    assert saved["fit"] == {"target": "coverage", "value": 0.6}

    at.selectbox(key=ss.KEY_RULE).set_value("product").run()  # another rule, same threshold
    save_as(at, "other-rule")
    assert run.threshold_sets()["other-rule"]["fitted_on"] == "manual"

    at.selectbox(key=ss.KEY_RULE).set_value("agreement").run()
    at.number_input(key=ss.key_weight(1)).set_value(0.9).run()  # other weights
    save_as(at, "other-weights")
    assert run.threshold_sets()["other-weights"]["fitted_on"] == "manual"

    # A set fitted on val of another run loads as manual here: its fit says nothing about this run.
    foreign = dict(saved, name="foreign", run_id="another-run")
    run.save_threshold_set("foreign", foreign)
    at.run()
    at.selectbox(key=ss.KEY_LOAD_NAME).set_value("foreign").run()
    click(at, "Load")
    save_as(at, "resaved")
    assert run.threshold_sets()["resaved"]["fitted_on"] == "manual"
    at.selectbox(key=ss.KEY_LOAD_NAME).set_value("fitted").run()
    click(at, "Load")
    save_as(at, "resaved")
    assert run.threshold_sets()["resaved"]["fitted_on"] == "val"


def test_guaranteed_risk_fit_sets_thresholds_and_reports_on_test(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    at.radio(key=ss.KEY_FIT_KIND).set_value("guaranteed_risk").run()
    at.number_input(key=ss.KEY_TARGET_RISK).set_value(5.0).run()
    at.number_input(key=ss.KEY_DELTA).set_value(0.05).run()
    click(at, "Fit on val")
    assert not at.exception
    preds = run.predictions("val")
    scored = selective.score(
        "agreement", preds["probs_erm"], preds["probs_masktune"], preds["label"], preds["group"]
    )
    fit = selective.fit_risk(selective.rank(scored), 0.05, 0.05)
    assert at.slider(key=ss.KEY_GLOBAL).value == pytest.approx(fit.thresholds.global_threshold, abs=5e-4)
    assert any("test_biased" in m.value for m in [*at.success, *at.warning])
    save_as(at, "sure")
    saved = run.threshold_sets()["sure"]
    assert saved["fitted_on"] == "val" and saved["fit"]["target"] == "guaranteed_risk"
    assert saved["fit"]["delta"] == 0.05 and saved["fit"]["val_risk_upper_bound"] == fit.val_bound


def test_weights_fitted_on_val_in_one_click(finished_store: RunStore) -> None:
    run = only_run(finished_store)
    at = selective_page()
    click(at, "Fit weights on val")
    preds = run.predictions("val")
    scored = selective.score("agreement", preds["probs_erm"], preds["probs_masktune"], preds["label"])
    weights = selective.fit_class_weights(scored)
    for c, w in enumerate(weights):
        assert at.number_input(key=ss.key_weight(c)).value == pytest.approx(max(w, ss.WEIGHT_RANGE[0]))


def test_rules_are_compared_with_intervals_and_rejected_groups_are_counted(finished_store: RunStore) -> None:
    at = selective_page()
    table = next(df.value for df in at.dataframe if "AURC [0, 1]" in df.value.columns)
    assert list(table["rule"]) == [r.label for r in selective.RULES.values()]
    assert table["AURC [0, 1]"].notna().all()
    assert any("95% bootstrap intervals" in c.value for c in at.caption)
    at.slider(key=ss.KEY_GLOBAL).set_value(1.0).run()  # rejects (nearly) everything
    assert shown(at)["Worst-group accuracy"][1] == "–"
    assert any("Fully rejected (coverage 0%)" in c.value for c in at.caption)


@pytest.mark.parametrize("scope", ["per_class", "per_group"])
def test_risk_fit_per_class_or_group_sets_the_engine_thresholds(finished_store: RunStore, scope: str) -> None:
    run = only_run(finished_store)
    at = selective_page()
    at.radio(key=ss.KEY_FIT_KIND).set_value("risk").run()
    at.radio(key=ss.KEY_FIT_SCOPE).set_value(scope).run()
    at.number_input(key=ss.KEY_TARGET_RISK).set_value(10.0).run()
    click(at, "Fit on val")
    assert not at.exception and not at.error
    preds = run.predictions("val")
    scored = selective.score(
        "agreement", preds["probs_erm"], preds["probs_masktune"], preds["label"], preds["group"]
    )
    fit = selective.fit_risk(selective.rank(scored), 0.1, None, scope)
    for c, t in enumerate(fit.thresholds.per_class):
        assert at.toggle(key=ss.key_own(c)).value is (t is not None)
    assert at.slider(key=ss.KEY_GLOBAL).value == pytest.approx(fit.thresholds.global_threshold, abs=5e-4)
