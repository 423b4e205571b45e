"""Selective classification checked against slow, plainly written per-sample reference loops.

The ``ref_*`` functions are also the baseline that ``bench/selective.py`` times.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from masktune_core import selective as sel
from masktune_core.errors import ConfigError

TOL = 1e-9

# ------------------------------------------------------------------------------ slow reference loops


def ref_argmax(row: list[float]) -> int:
    best = 0
    for j in range(1, len(row)):
        if row[j] > row[best]:
            best = j
    return best


def ref_score(rule: str, probs_erm: np.ndarray, probs_mt: np.ndarray, labels: np.ndarray) -> dict:
    """Per-sample prediction, confidence, correctness and agreement, one sample at a time."""
    out = {"pred": [], "confidence": [], "correct": [], "agree": []}
    for i in range(len(labels)):
        erm = [float(v) for v in probs_erm[i]]
        mt = [float(v) for v in probs_mt[i]]
        a_erm, a_mt = ref_argmax(erm), ref_argmax(mt)
        if rule == "agreement":
            pred = a_mt
            conf = mt[a_mt] if a_erm == a_mt else -math.inf
        elif rule == "product":
            x = [erm[j] * mt[j] for j in range(len(mt))]
            top = max(x)
            ex = [math.exp(v - top) for v in x]
            total = sum(ex)
            p = [v / total for v in ex]
            pred = ref_argmax(p)
            conf = p[pred]
        elif rule == "softmax_erm":
            pred, conf = a_erm, erm[a_erm]
        else:
            pred, conf = a_mt, mt[a_mt]
        out["pred"].append(pred)
        out["confidence"].append(conf)
        out["correct"].append(pred == int(labels[i]))
        out["agree"].append(a_erm == a_mt)
    return out


def ref_summary(n: int, n_acc: int, n_hit: int) -> dict:
    acc = n_hit / n_acc if n_acc else None
    return {
        "n": n,
        "n_accepted": n_acc,
        "coverage": n_acc / n if n else None,
        "accuracy_on_accepted": acc,
        "selective_risk": None if acc is None else 1.0 - acc,
    }


def ref_evaluate(
    s: dict, labels: list[int], groups: list[int] | None, t_c: list[float], w: list[float]
) -> dict:
    """Every metric of evaluate(), counting accepted samples one at a time."""
    k = len(t_c)
    n = len(labels)
    tot = {"n": 0, "acc": 0, "hit": 0}
    per_class = {c: {"n": 0, "acc": 0, "hit": 0} for c in range(k)}
    per_group: dict[int, dict] = {}
    n_agree = 0
    for i in range(n):
        c = s["pred"][i]
        accept = s["confidence"][i] / w[c] >= t_c[c]
        hit = accept and s["correct"][i]
        buckets = [tot, per_class[labels[i]]]
        if groups is not None:
            buckets.append(per_group.setdefault(groups[i], {"n": 0, "acc": 0, "hit": 0}))
        for b in buckets:
            b["n"] += 1
            b["acc"] += accept
            b["hit"] += hit
        n_agree += s["agree"][i]
    out = ref_summary(tot["n"], tot["acc"], tot["hit"])
    out["rejection_rate"] = 1.0 - out["coverage"]
    out["agreement_rate"] = n_agree / n
    out["per_class"] = {c: ref_summary(b["n"], b["acc"], b["hit"]) for c, b in per_class.items()}
    out["per_group"] = {g: ref_summary(b["n"], b["acc"], b["hit"]) for g, b in sorted(per_group.items())}
    out["fully_rejected_groups"] = [g for g, v in out["per_group"].items() if v["n_accepted"] == 0]
    worst = None
    for g in out["per_group"].values():
        if g["accuracy_on_accepted"] is None:  # a fully rejected group leaves the worst group undefined
            worst = None
            break
        if worst is None or g["accuracy_on_accepted"] < worst:
            worst = g["accuracy_on_accepted"]
    out["worst_group_accuracy_on_accepted"] = worst
    return out


def ref_keys(s: dict, w: list[float]) -> list[float]:
    return [s["confidence"][i] / w[s["pred"][i]] for i in range(len(s["pred"]))]


def ref_curve(keys: list[float], correct: list[bool], members: list[int], n: int) -> dict:
    """Risk-coverage over the samples in ``members``: walk them by decreasing key and close a point
    whenever the key changes, so every distinct threshold gets exactly one point."""
    items = sorted(((keys[i], not correct[i]) for i in members if keys[i] > -math.inf), key=lambda it: -it[0])
    curve = {"coverage": [], "risk": [], "threshold": [], "n_accepted": []}
    errors = 0
    area = 0.0
    for j, (key, wrong) in enumerate(items):
        taken = j + 1
        errors += wrong
        if j == len(items) - 1 or items[j + 1][0] != key:
            prev = curve["n_accepted"][-1] if curve["n_accepted"] else 0
            risk = errors / taken
            area += (taken - prev) * risk
            curve["coverage"].append(taken / n)
            curve["risk"].append(risk)
            curve["threshold"].append(key)
            curve["n_accepted"].append(taken)
    curve["aurc_reachable"] = area / len(items) if items else None
    curve["max_coverage"] = len(items) / n
    return curve


def ref_curves(s: dict, labels: list[int], groups: list[int] | None, w: list[float]) -> dict:
    """The overall, per-class and per-group reference curves of one split."""
    keys = ref_keys(s, w)
    everyone = list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    by_group: dict[int, list[int]] = {}
    for i in everyone:
        by_class.setdefault(labels[i], []).append(i)
        if groups is not None:
            by_group.setdefault(groups[i], []).append(i)
    return {
        "overall": ref_curve(keys, s["correct"], everyone, len(labels)),
        "class": {c: ref_curve(keys, s["correct"], m, len(m)) for c, m in sorted(by_class.items())},
        "group": {g: ref_curve(keys, s["correct"], m, len(m)) for g, m in sorted(by_group.items())},
    }


# ---------------------------------------------------------------------------------------------- helpers


def make_inputs(seed: int, k: int, n: int = 200, ties: bool = False) -> tuple[np.ndarray, ...]:
    """Two correlated sets of softmax outputs; with ``ties`` they sit on a coarse grid so many tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels]
    p_mt = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noisy = logits + rng.normal(scale=1.5, size=(n, k))
    p_erm = np.exp(noisy) / np.exp(noisy).sum(1, keepdims=True)
    if ties:
        p_mt, p_erm = np.round(p_mt * 20) / 20, np.round(p_erm * 20) / 20
    groups = rng.choice([0, 3, 7], size=n)
    return p_erm.astype(np.float32), p_mt.astype(np.float32), labels, groups


def random_thresholds(seed: int, k: int) -> sel.Thresholds:
    rnd = random.Random(seed)
    per_class = [None if rnd.random() < 0.5 else rnd.uniform(0.05, 0.9) for _ in range(k)]
    weights = [rnd.uniform(0.5, 1.5) for _ in range(k)]
    return sel.Thresholds.build(k, rnd.uniform(0.1, 0.8), per_class, weights)


def assert_close(actual, expected, path: str = "result") -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for key in expected:
            assert_close(actual[key], expected[key], f"{path}[{key!r}]")
    elif expected is None:
        assert actual is None, path
    elif isinstance(expected, list | np.ndarray):
        assert len(actual) == len(expected), path
        np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=0, atol=TOL)
    else:
        assert actual == pytest.approx(expected, abs=TOL), path


def curve_dict(curve: sel.Curve) -> dict:
    return {
        "coverage": curve.coverage,
        "risk": curve.risk,
        "threshold": curve.threshold,
        "n_accepted": curve.n_accepted,
        "aurc_reachable": curve.aurc_reachable,
        "max_coverage": curve.max_coverage,
    }


# ------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("rule", list(sel.RULES))
@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_rule_matches_reference(rule: str, k: int, seed: int, ties: bool) -> None:
    p_erm, p_mt, labels, groups = make_inputs(seed, k, ties=ties)
    scored = sel.score(rule, p_erm, p_mt, labels, groups)
    ref = ref_score(rule, p_erm, p_mt, labels)
    assert scored.pred.tolist() == ref["pred"]
    assert scored.correct.tolist() == ref["correct"]
    assert scored.agree.tolist() == ref["agree"]
    np.testing.assert_allclose(scored.confidence, ref["confidence"], rtol=0, atol=TOL)

    thresholds = random_thresholds(seed, k)
    t_c, w = thresholds.class_thresholds.tolist(), list(thresholds.weights)
    assert_close(
        sel.evaluate(scored, thresholds), ref_evaluate(ref, labels.tolist(), groups.tolist(), t_c, w)
    )

    # Curves are fed the module's own confidences: only the curve construction is under test here.
    same = {key: getattr(scored, key).tolist() for key in ("pred", "confidence", "correct")}
    expected = ref_curves(same, labels.tolist(), groups.tolist(), w)
    ranking = sel.rank(scored, w)
    big = 10 * len(labels)
    assert_close(curve_dict(sel.risk_coverage(ranking, max_points=big)), expected["overall"])
    for by in ("class", "group"):
        curves = sel.risk_coverage_by(ranking, by, max_points=big)
        assert_close({key: curve_dict(c) for key, c in curves.items()}, expected[by], by)


@pytest.mark.parametrize("rule", list(sel.RULES))
def test_every_curve_point_is_the_operating_point_of_its_threshold(rule: str) -> None:
    p_erm, p_mt, labels, groups = make_inputs(5, 10, ties=True)
    scored = sel.score(rule, p_erm, p_mt, labels, groups)
    # The module's own confidences: product-rule ties must not hinge on a last-bit difference in exp.
    ref = {key: getattr(scored, key).tolist() for key in ("pred", "confidence", "correct", "agree")}
    weights = [0.8 if c % 3 == 0 else 1.2 for c in range(10)]
    curve = sel.risk_coverage(sel.rank(scored, weights), max_points=10_000)
    assert curve.n_points == len(curve.threshold) > 0
    for t, coverage, risk in zip(curve.threshold, curve.coverage, curve.risk, strict=True):
        if t > 1:
            continue
        got = ref_evaluate(ref, labels.tolist(), None, [float(t)] * 10, weights)
        assert got["coverage"] == pytest.approx(coverage, abs=TOL)
        assert got["selective_risk"] == pytest.approx(risk, abs=TOL)
        assert sel.evaluate(scored, sel.Thresholds.build(10, t, weights=weights))["coverage"] == coverage


def test_downsampled_curve_keeps_ends_and_full_aurc() -> None:
    scored = sel.score("softmax_masktune", *make_inputs(3, 10, n=500))
    ranking = sel.rank(scored)
    full = sel.risk_coverage(ranking, max_points=10_000)
    small = sel.risk_coverage(ranking, max_points=10)
    assert full.n_points > 10
    assert len(small.coverage) == 10 and small.n_points == full.n_points
    assert small.aurc_reachable == full.aurc_reachable
    assert small.coverage[0] == full.coverage[0] and small.coverage[-1] == full.coverage[-1] == 1.0
    assert np.all(np.diff(small.coverage) > 0)
    assert set(small.threshold.tolist()) <= set(full.threshold.tolist())


def test_product_rule_is_softmax_of_the_elementwise_product() -> None:
    scored = sel.score("product", np.array([[0.9, 0.1]], np.float32), np.array([[0.6, 0.4]], np.float32), [0])
    x0, x1 = 0.9 * 0.6, 0.1 * 0.4
    assert scored.pred.tolist() == [0]
    assert scored.confidence[0] == pytest.approx(math.exp(x0) / (math.exp(x0) + math.exp(x1)), abs=1e-6)


# ------------------------------------------------------------------------------------------ edge cases


def test_nothing_accepted() -> None:
    scored = sel.score("softmax_erm", *make_inputs(0, 10))
    result = sel.evaluate(scored, sel.Thresholds.build(10, 1.0))
    assert result["n_accepted"] == 0 and result["coverage"] == 0.0 and result["rejection_rate"] == 1.0
    assert result["accuracy_on_accepted"] is None and result["selective_risk"] is None
    assert all(c["accuracy_on_accepted"] is None for c in result["per_class"].values())
    assert result["worst_group_accuracy_on_accepted"] is None


def test_everything_accepted() -> None:
    p_erm, p_mt, labels, groups = make_inputs(1, 10)
    result = sel.evaluate(
        sel.score("softmax_erm", p_erm, p_mt, labels, groups), sel.Thresholds.build(10, 0.0)
    )
    accuracy = float(np.mean(p_erm.argmax(1) == labels))
    assert result["coverage"] == 1.0 and result["rejection_rate"] == 0.0
    assert result["accuracy_on_accepted"] == pytest.approx(accuracy)
    assert result["selective_risk"] == pytest.approx(1 - accuracy)


def test_all_disagree_agreement_rule_accepts_nothing() -> None:
    p_erm = np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1]], np.float32)
    p_mt = p_erm[:, ::-1].copy()
    scored = sel.score("agreement", p_erm, p_mt, [0, 1, 1])
    assert np.all(np.isneginf(scored.confidence))
    result = sel.evaluate(scored, sel.Thresholds.build(2, 0.0))
    assert result["agreement_rate"] == 0.0 and result["coverage"] == 0.0
    assert result["accuracy_on_accepted"] is None
    ranking = sel.rank(scored)
    curve = sel.risk_coverage(ranking)
    assert curve.aurc_reachable is None and curve.max_coverage == 0.0 and len(curve.coverage) == 0
    fit = sel.fit_global_threshold(ranking, 0.8)
    assert not fit.reachable and fit.coverage == 0.0 and fit.threshold == 0.0


def test_all_tied_confidences_give_one_point() -> None:
    probs = np.tile(np.array([[0.6, 0.4]], np.float32), (4, 1))
    ranking = sel.rank(sel.score("softmax_masktune", probs, probs, [0, 0, 1, 1]))
    curve = sel.risk_coverage(ranking)
    assert curve.n_points == 1 and curve.coverage.tolist() == [1.0] and curve.risk.tolist() == [0.5]
    assert curve.aurc_reachable == 0.5  # one tie block: every prefix takes the block's risk
    fit = sel.fit_global_threshold(ranking, 0.5)
    assert fit.threshold == pytest.approx(0.6) and fit.coverage == 1.0 and fit.reachable


def test_argmax_ties_take_the_first_class_for_both_models() -> None:
    probs = np.array([[0.5, 0.5]], np.float32)
    scored = sel.score("agreement", probs, probs, [0])
    assert scored.pred.tolist() == [0] and scored.agree.tolist() == [True]


def test_groups_keep_their_own_ids_and_are_optional() -> None:
    p_erm, p_mt, labels, groups = make_inputs(4, 2)
    with_groups = sel.score("agreement", p_erm, p_mt, labels, groups)
    assert set(sel.evaluate(with_groups, sel.Thresholds.build(2, 0.5))["per_group"]) == {0, 3, 7}
    assert set(sel.risk_coverage_by(sel.rank(with_groups), "group")) == {0, 3, 7}
    plain = sel.score("agreement", p_erm, p_mt, labels)
    assert sel.evaluate(plain, sel.Thresholds.build(2, 0.5))["per_group"] == {}
    assert sel.risk_coverage_by(sel.rank(plain), "group") == {}
    with pytest.raises(ConfigError, match=r"^by:"):
        sel.risk_coverage_by(sel.rank(plain), "label")  # type: ignore[arg-type]


def test_scored_arrays_are_read_only() -> None:
    scored = sel.score("product", *make_inputs(0, 2))
    with pytest.raises(ValueError):
        scored.confidence[0] = 1.0


# ------------------------------------------------------------------------------------- fit on validation


@pytest.mark.parametrize("rule", ["product", "softmax_erm", "agreement"])
@pytest.mark.parametrize("ties", [False, True])
def test_fit_is_the_tightest_threshold_meeting_the_target(rule: str, ties: bool) -> None:
    scored = sel.score(rule, *make_inputs(7, 10, n=400, ties=ties))
    weights = [0.9] * 5 + [1.1] * 5
    ranking = sel.rank(scored, weights)
    for target in (0.05, 0.3, 0.5, 0.8, 0.85, 0.9, 0.95, 1.0):
        fit = sel.fit_global_threshold(ranking, target)

        def coverage(t: float) -> float:
            return sel.evaluate(scored, sel.Thresholds.build(10, t, weights=weights))["coverage"]

        assert coverage(fit.threshold) == fit.coverage
        if fit.reachable:
            assert fit.coverage >= target
            assert fit.threshold == 1.0 or coverage(float(np.nextafter(fit.threshold, 2.0))) < target
        else:
            assert target > fit.max_coverage == fit.coverage
            assert fit.threshold == pytest.approx(float(ranking.keys[-1]))


def test_fit_is_clamped_to_the_threshold_range() -> None:
    p_erm, p_mt, labels, _ = make_inputs(2, 2)
    ranking = sel.rank(sel.score("softmax_erm", p_erm, p_mt, labels), [0.5, 0.5])
    fit = sel.fit_global_threshold(ranking, 0.01)
    assert fit.threshold == 1.0 and fit.coverage >= 0.01 and fit.reachable
    with pytest.raises(ConfigError, match=r"^target_coverage:"):
        sel.fit_global_threshold(ranking, 0.0)


def test_coverage_table_fits_on_val_and_reports_on_test() -> None:
    weights = [1.0] * 9 + [0.7]
    val = sel.rank(sel.score("product", *make_inputs(10, 10, n=300)), weights)
    test = sel.score("product", *make_inputs(11, 10, n=300))
    rows = sel.coverage_table(val, test)
    assert [r["target_coverage"] for r in rows] == list(sel.DEFAULT_TARGETS)
    for row in rows:
        assert row["val_coverage"] >= row["target_coverage"]
        result = sel.evaluate(test, sel.Thresholds.build(10, row["threshold"], weights=weights))
        assert row["test_coverage"] == result["coverage"]
        assert row["test_selective_risk"] == result["selective_risk"]
    with pytest.raises(ValueError, match="scored differently"):
        sel.coverage_table(val, sel.score("agreement", *make_inputs(11, 10, n=300)))


# ---------------------------------------------------------------------------------- thresholds and sets


def test_tau_is_class_threshold_times_weight() -> None:
    th = sel.Thresholds.build(3, 0.5, per_class=[None, 0.2, None], weights=[1.0, 0.5, 2.0])
    assert th.class_thresholds.tolist() == [0.5, 0.2, 0.5]
    assert th.tau.tolist() == [0.5, 0.1, 1.0]


def test_thresholds_must_match_the_number_of_classes() -> None:
    scored = sel.score("agreement", *make_inputs(0, 10))
    with pytest.raises(ConfigError, match=r"^thresholds:"):
        sel.evaluate(scored, sel.Thresholds.build(2, 0.5))


def test_threshold_set_round_trip() -> None:
    th = sel.Thresholds.build(3, 0.4, per_class=[None, 0.25, None], weights=[1.0, 0.8, 1.0])
    saved = sel.ThresholdSet("hard classes", "agreement", th, fitted_on="val", target_coverage=0.9)
    text = saved.to_json()
    assert json.loads(text)["per_class"] == [None, 0.25, None]
    assert sel.ThresholdSet.from_json(text, num_classes=3) == saved


def _set_json(**changes) -> str:
    data = {
        "name": "s",
        "rule": "product",
        "global_threshold": 0.5,
        "per_class": [None, None, None],
        "weights": [1.0, 1.0, 1.0],
        "fitted_on": "val",
        "target_coverage": None,
        "created": "2024-05-01T12:00:00+00:00",
    }
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v != "<drop>"})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"weights": [1.0, 1.0]}, "weights"),
        ({"per_class": [0.1, 0.2, 0.3, 0.4]}, "per_class"),
        ({"weights": [1.0, -0.5, 1.0]}, r"weights\[1\]"),
        ({"weights": [1.0, 0.0, 1.0]}, r"weights\[1\]"),
        ({"global_threshold": 1.5}, "global_threshold"),
        ({"per_class": [None, None, 1.01]}, r"per_class\[2\]"),
        ({"global_threshold": True}, "global_threshold"),
        ({"global_threshold": "0.5"}, "global_threshold"),
        ({"rule": "majority"}, "rule"),
        ({"name": ""}, "name"),
        ({"target_coverage": 0}, "target_coverage"),
        ({"created": "yesterday"}, "created"),
        ({"fitted_on": "<drop>"}, "fitted_on"),
        ({"extra": 1}, "extra"),
        ({"weights": {"0": 1.0}}, "weights"),
    ],
)
def test_threshold_set_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        sel.ThresholdSet.from_json(_set_json(**changes), num_classes=3)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_threshold_set_must_be_a_json_object(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^threshold_set:"):
        sel.ThresholdSet.from_json(text, num_classes=3)


# ----------------------------------------------------------------------------------------- rule inputs


def test_registry_lists_every_rule_with_words() -> None:
    assert list(sel.RULES) == ["agreement", "product", "softmax_erm", "softmax_masktune"]
    assert all(r.label and r.definition and r.name == key for key, r in sel.RULES.items())


def test_bad_inputs() -> None:
    p_erm, p_mt, labels, _ = make_inputs(0, 2)
    with pytest.raises(ConfigError, match=r"^rule:"):
        sel.score("vote", p_erm, p_mt, labels)
    with pytest.raises(ValueError, match="differ in shape"):
        sel.score("product", p_erm[:, :1], p_mt, labels)
    with pytest.raises(ValueError, match="labels"):
        sel.score("product", p_erm, p_mt, labels + 2)
    with pytest.raises(ValueError, match="probs_mt"):
        sel.score("product", p_erm, np.full_like(p_mt, np.nan), labels)
