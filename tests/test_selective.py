"""Selective classification checked against slow, plainly written per-sample reference loops: rules,
metrics, curves, summaries (AURC, AUGRC, E-AURC), bootstrap intervals, risk fits and, by simulation, the
SGR guarantee."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
from scipy.stats import binom

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


# The summary references below walk the samples one prefix at a time and integrate the risk-coverage
# curve in per-sample slices of width 1 / n, a different formulation from the module's per-block sums.

# ------------------------------------------------------------- summaries, bootstrap and risk fits: references


def ref_prefixes(keys: list[float], correct: list[bool]) -> list[tuple[int, float]]:
    """(k, expected errors among the first k) for every prefix k = 1..m of the acceptable samples sorted by
    decreasing key: inside a tie block, the block's errors are spread evenly over its prefixes (the mean
    over every order of the tied samples)."""
    items = sorted(
        ((k, not c) for k, c in zip(keys, correct, strict=True) if k > -math.inf), key=lambda t: -t[0]
    )
    out = []
    start = 0
    while start < len(items):
        end = start
        while end + 1 < len(items) and items[end + 1][0] == items[start][0]:
            end += 1
        before = sum(w for _, w in items[:start])
        in_block = sum(w for _, w in items[start : end + 1])
        size = end - start + 1
        for i in range(1, size + 1):
            out.append((start + i, before + i * in_block / size))
        start = end + 1
    return out


def ref_curve_summary(keys: list[float], correct: list[bool], upto: float | None = None) -> dict:
    n = len(keys)
    prefixes = ref_prefixes(keys, correct)
    m = len(prefixes)
    if m == 0:
        return {"aurc": None, "augrc": None, "aurc_optimal": None, "eaurc": None, "aurc_common": None}
    last_acc, last_wrong = prefixes[-1]
    last = last_wrong / last_acc
    aurc = augrc = common = 0.0
    for k, (acc, wrong) in enumerate(prefixes):  # slice ((k) / n, (k + 1) / n]
        aurc += (wrong / acc) / n
        augrc += (wrong / n) / n
        if upto is not None:
            common += max(0.0, min((k + 1) / n, upto) - k / n) * (wrong / acc)
    aurc += (1 - m / n) * last
    augrc += (1 - m / n) * last_wrong / n
    if upto is not None:
        common += max(0.0, upto - m / n) * last
        common /= upto
    # Perfect ranking of the same acceptable samples: every correct one first.
    optimal, errors = 0.0, 0
    n_correct = m - last_wrong
    for k in range(1, m + 1):
        errors = max(0, k - n_correct)
        optimal += (errors / k) / n
    optimal += (1 - m / n) * last
    return {
        "aurc": aurc,
        "augrc": augrc,
        "aurc_optimal": optimal,
        "eaurc": aurc - optimal,
        "aurc_common": common if upto is not None else None,
    }


def summary_dict(s: sel.Summary) -> dict:
    return {
        "aurc": s.aurc,
        "augrc": s.augrc,
        "aurc_optimal": s.aurc_optimal,
        "eaurc": s.eaurc,
        "aurc_common": s.aurc_common,
    }


def close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in b:
        if b[key] is None:
            assert a[key] is None, key
        else:
            assert a[key] == pytest.approx(b[key], abs=TOL), key


def scored_from(confidence: np.ndarray, correct: np.ndarray, groups: np.ndarray | None = None,
                pred: np.ndarray | None = None, k: int = 2) -> sel.Scored:  # fmt: skip
    """A Scored built straight from confidences and correctness (a known error model)."""
    n = len(confidence)
    pred = np.zeros(n, dtype=np.int64) if pred is None else pred
    labels = np.where(correct, pred, (pred + 1) % k)
    ids, index = (np.zeros(0, np.int64), None) if groups is None else np.unique(groups, return_inverse=True)
    return sel.Scored(
        rule="softmax_masktune", num_classes=k, pred=pred, confidence=np.asarray(confidence, float),
        correct=np.asarray(correct, bool), agree=np.isfinite(confidence), labels=labels,
        groups=groups, group_ids=ids, group_index=index,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- summaries


@pytest.mark.parametrize("rule", list(sel.RULES))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_summary_matches_the_reference(rule: str, seed: int, ties: bool) -> None:
    scored = sel.score(rule, *make_inputs(seed, 10, n=150, ties=ties))
    weights = [0.8 if c % 2 else 1.0 for c in range(10)]
    ranking = sel.rank(scored, weights)
    keys = (scored.confidence / np.asarray(weights)[scored.pred]).tolist()
    upto = 0.7
    close(summary_dict(sel.summarize(ranking, upto)), ref_curve_summary(keys, scored.correct.tolist(), upto))
    assert sel.summarize(ranking).aurc_common is None


def test_full_range_aurc_of_a_rule_that_stops_early_counts_the_unreached_range() -> None:
    # 4 samples, 2 acceptable (risk 1/2 once both are in), 2 never acceptable: r = 0 on (0, 1/4],
    # 1/2 on (1/4, 1/2], then stays 1/2 on (1/2, 1]. Full range: 0 + 1/8 + 1/4 = 3/8.
    scored = scored_from(np.array([0.9, 0.8, -np.inf, -np.inf]), np.array([True, False, True, True]))
    ranking = sel.rank(scored)
    summary = sel.summarize(ranking, common_coverage=0.5)
    assert summary.aurc == pytest.approx(3 / 8)
    assert summary.aurc_common == pytest.approx((1 / 8) / 0.5)
    assert sel.risk_coverage(ranking).aurc_reachable == pytest.approx(1 / 4)  # the old, range-dependent one
    assert summary.max_coverage == 0.5


def test_nothing_acceptable_is_undefined_not_zero() -> None:
    scored = scored_from(np.full(3, -np.inf), np.array([True, False, True]))
    ranking = sel.rank(scored)
    summary = sel.summarize(ranking, 0.5)
    assert summary.aurc is None and summary.augrc is None and summary.eaurc is None
    assert summary.aurc_common is None
    assert sel.coverage_at_risk(ranking, 0.1)["coverage"] is None
    assert sel.risk_at_coverage(ranking, 0.1)["selective_risk"] is None
    intervals = sel.bootstrap_summary(ranking, resamples=1000)
    assert intervals["aurc"].low is None and intervals["aurc"].undefined == 1000


@pytest.mark.parametrize(("n", "wrong"), [(50, 0), (50, 7), (200, 31), (10, 10)])
def test_a_perfect_ranking_reaches_the_closed_form_optimum(n: int, wrong: int) -> None:
    correct = np.arange(n) < n - wrong  # the highest confidences are the correct ones
    scored = scored_from(np.linspace(1.0, 0.01, n), correct)
    summary = sel.summarize(sel.rank(scored))
    harmonic = sum(1 / k for k in range(n - wrong + 1, n + 1))
    assert summary.aurc == pytest.approx(wrong / n - (n - wrong) / n * harmonic, abs=1e-12)
    assert summary.augrc == pytest.approx(wrong * (wrong + 1) / (2 * n * n), abs=1e-12)
    assert summary.eaurc == pytest.approx(0.0, abs=1e-12)


def test_a_reversed_ranking_has_positive_eaurc() -> None:
    correct = np.arange(40) >= 10  # the 10 most confident are wrong
    summary = sel.summarize(sel.rank(scored_from(np.linspace(1.0, 0.1, 40), correct)))
    assert summary.eaurc > 0.2


@pytest.mark.parametrize("rule", ["agreement", "product", "softmax_erm"])
def test_shuffled_inputs_with_ties_give_the_same_curve_and_numbers(rule: str) -> None:
    p_erm, p_mt, labels, groups = make_inputs(4, 10, n=300, ties=True)
    perm = np.random.default_rng(9).permutation(len(labels))
    rank_a = sel.rank(sel.score(rule, p_erm, p_mt, labels, groups))
    rank_b = sel.rank(sel.score(rule, p_erm[perm], p_mt[perm], labels[perm], groups[perm]))
    a, b = sel.risk_coverage(rank_a, 10_000), sel.risk_coverage(rank_b, 10_000)
    for field in ("coverage", "risk", "threshold", "n_accepted"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert sel.summarize(rank_a, 0.8) == sel.summarize(rank_b, 0.8)
    assert sel.fit_risk(rank_a, 0.1, 0.1).thresholds == sel.fit_risk(rank_b, 0.1, 0.1).thresholds


def test_coverage_at_risk_and_risk_at_coverage_match_a_scan() -> None:
    scored = sel.score("softmax_masktune", *make_inputs(6, 10, n=300, ties=True))
    ranking = sel.rank(scored)
    points = sorted({float(t) for t in scored.confidence}, reverse=True)
    stats = []
    for t in points:
        acc = scored.confidence >= t
        stats.append((t, acc.sum() / scored.n, float((acc & ~scored.correct).sum() / acc.sum())))
    for r in (0.0, 0.02, 0.05, 0.2):
        ok = [s for s in stats if s[2] <= r + 1e-12]
        got = sel.coverage_at_risk(ranking, r)
        if ok:
            best = max(ok, key=lambda s: s[1])
            assert got["coverage"] == pytest.approx(best[1]) and got["threshold"] == pytest.approx(best[0])
        else:
            assert got["coverage"] is None
    for c in (0.1, 0.5, 0.9, 1.0):
        first = next(s for s in reversed(stats[::-1]) if s[1] >= c - 1e-12)
        got = sel.risk_at_coverage(ranking, c)
        assert got["selective_risk"] == pytest.approx(first[2]) and got["achieved_coverage"] == first[1]


def test_common_coverage_is_the_smallest_reach() -> None:
    p = make_inputs(1, 10)
    ranks = [sel.rank(sel.score(r, *p)) for r in ("agreement", "product")]
    assert sel.common_coverage(ranks) == pytest.approx(float(ranks[0].scored.agree.mean()))
    with pytest.raises(ConfigError, match=r"^common_coverage:"):
        sel.summarize(ranks[0], 0.0)


# ----------------------------------------------------------------------------------------- bootstrap


def test_curve_bootstrap_matches_resampling_by_hand() -> None:
    scored = sel.score("agreement", *make_inputs(2, 10, n=80, ties=True))
    ranking = sel.rank(scored)
    got = sel.bootstrap_summary(ranking, common_coverage=0.6, resamples=1000, seed=5)
    # The same draws, one resample at a time through the reference (80 samples: one chunk of draws).
    draws = np.random.default_rng(5).integers(0, scored.n, size=(1000, scored.n))
    values = {k: [] for k in ("aurc", "augrc", "eaurc", "aurc_common")}
    for idx in draws:
        ref = ref_curve_summary(scored.confidence[idx].tolist(), scored.correct[idx].tolist(), 0.6)
        for k in values:
            if ref[k] is not None:
                values[k].append(ref[k])
    for k, vals in values.items():
        low, high = np.percentile(vals, [2.5, 97.5])
        assert got[k].low == pytest.approx(low, abs=1e-9) and got[k].high == pytest.approx(high, abs=1e-9)
        assert got[k].resamples == 1000 and got[k].seed == 5
    assert got["aurc"].estimate == sel.summarize(ranking).aurc


def test_point_bootstrap_is_seeded_and_sized_like_the_binomial() -> None:
    p_erm, p_mt, labels, groups = make_inputs(3, 10, n=2000)
    scored = sel.score("softmax_masktune", p_erm, p_mt, labels, groups)
    th = sel.Thresholds.build(10, 0.6)
    a = sel.bootstrap_point(scored, th, resamples=2000, seed=1)
    assert a == sel.bootstrap_point(scored, th, resamples=2000, seed=1)
    assert a != sel.bootstrap_point(scored, th, resamples=2000, seed=2)
    cov = sel.evaluate(scored, th)["coverage"]
    half = 1.96 * math.sqrt(cov * (1 - cov) / scored.n)
    assert a["coverage"].estimate == cov
    assert a["coverage"].low == pytest.approx(cov - half, abs=0.2 * half)
    assert a["coverage"].high == pytest.approx(cov + half, abs=0.2 * half)
    assert (
        a["worst_group_accuracy_on_accepted"].estimate
        == sel.evaluate(scored, th)["worst_group_accuracy_on_accepted"]
    )
    with pytest.raises(ConfigError, match=r"^resamples:"):
        sel.bootstrap_point(scored, th, resamples=999)


# ------------------------------------------------------------------------------- fully rejected groups


def test_rejecting_a_whole_group_never_improves_the_worst_group_figure() -> None:
    # Group 1 is the worst (1 of 2 right) and has the lowest confidences; a threshold that rejects it
    # must not report group 0's perfect accuracy as the worst group.
    scored = scored_from(
        np.array([0.9, 0.8, 0.3, 0.2]), np.array([True, True, True, False]), groups=np.array([0, 0, 1, 1])
    )
    everything = sel.evaluate(scored, sel.Thresholds.build(2, 0.0))
    assert everything["worst_group_accuracy_on_accepted"] == 0.5 and everything["fully_rejected_groups"] == []
    strict = sel.evaluate(scored, sel.Thresholds.build(2, 0.5))
    assert strict["fully_rejected_groups"] == [1]
    assert strict["worst_group_accuracy_on_accepted"] is None
    assert strict["per_group"][1]["coverage"] == 0.0


# ------------------------------------------------------------------------------------------ risk fits


def test_clopper_pearson_upper_bound_solves_the_binomial_tail() -> None:
    for e, n in [(0, 10), (3, 50), (17, 400), (0, 1)]:
        b = float(sel.clopper_pearson_upper(e, n, 0.05))
        assert binom.cdf(e, n, b) == pytest.approx(0.05, abs=1e-9)
    assert sel.clopper_pearson_upper(5, 5, 0.05) == 1.0
    assert sel.clopper_pearson_upper(0, 0, 0.05) == 0.0


def test_risk_fit_without_guarantee_is_the_largest_coverage_within_the_target() -> None:
    ranking = sel.rank(sel.score("product", *make_inputs(8, 10, n=400, ties=True)))
    for r in (0.01, 0.05, 0.2):
        fit = sel.fit_risk(ranking, r)
        best = sel.coverage_at_risk(ranking, r)
        if best["coverage"] is None:
            assert not fit.feasible
        else:
            assert fit.feasible and fit.val_coverage == pytest.approx(best["coverage"])
            assert fit.thresholds.global_threshold == pytest.approx(best["threshold"])


def test_a_guaranteed_fit_is_certified_and_covers_less_than_the_empirical_one() -> None:
    ranking = sel.rank(sel.score("softmax_masktune", *make_inputs(8, 10, n=2000)))
    plain, sure = sel.fit_risk(ranking, 0.1), sel.fit_risk(ranking, 0.1, delta=0.05)
    assert sure.feasible and sure.val_bound <= 0.1 and sure.val_risk <= sure.val_bound
    assert sure.val_coverage <= plain.val_coverage
    assert sure.tests <= math.ceil(math.log2(ranking.scored.n + 1))
    assert sure.delta_per_test == pytest.approx(0.05 / math.ceil(math.log2(len(set(ranking.keys)) + 1)))


@pytest.mark.parametrize(
    ("target", "delta", "field"),
    [(0.0, 0.1, "target_risk"), (1.0, 0.1, "target_risk"), (0.1, 0.0, "delta"), (0.1, 1.5, "delta")],
)
def test_risk_targets_are_validated(target: float, delta: float, field: str) -> None:
    ranking = sel.rank(sel.score("product", *make_inputs(0, 2)[:3]))  # no groups
    with pytest.raises(ConfigError, match=f"^{field}:"):
        sel.fit_risk(ranking, target, delta)
    with pytest.raises(ConfigError, match=r"^per_group:"):
        sel.fit_risk(ranking, 0.1, 0.1, scope="per_group")


def test_per_class_and_per_group_fits_bound_every_unit_on_val() -> None:
    p_erm, p_mt, labels, groups = make_inputs(12, 3, n=3000)
    scored = sel.score("softmax_masktune", p_erm, p_mt, labels, groups)
    ranking = sel.rank(scored)
    per_class = sel.fit_risk(ranking, 0.1, 0.1, scope="per_class")
    assert all(t is not None for t in per_class.thresholds.per_class)
    assert all(p["bound"] is None or p["bound"] <= 0.1 for p in per_class.parts)
    per_group = sel.fit_risk(ranking, 0.1, 0.1, scope="per_group")
    assert all(p["bound"] is None or p["bound"] <= 0.1 for p in per_group.parts)
    assert set(per_group.thresholds.per_class) == {None}
    report = sel.check_on_test(per_group, scored)
    assert {u["key"] for u in report["units"]} == {0, 3, 7}


# SGR by simulation. Confidence c ~ U(0, 1); a sample is wrong with probability a * (1 - c)^2, so the
# true selective risk at threshold t is a * (1 - t)^2 / 3 (exact, no test sample needed: the guarantee is
# about the true risk, and a finite test split would add noise of its own). Over 500 val draws the share
# of fits whose true risk exceeds r* must stay <= delta + slack, where the slack is three binomial
# standard errors of a 500-trial Monte-Carlo estimate: 3 * sqrt(0.1 * 0.9 / 500) = 0.040 for delta = 0.1.
TRIALS, DELTA, TARGET = 500, 0.1, 0.05
SLACK = 3 * math.sqrt(DELTA * (1 - DELTA) / TRIALS)


def _true_risk(a: float, t: float) -> float:
    return a * (1 - t) ** 2 / 3


@pytest.mark.parametrize("scope", ["global", "per_class", "per_group"])
def test_the_guarantee_holds_by_simulation(scope: str) -> None:
    rng = np.random.default_rng(2017)
    rates = np.array([0.25, 0.45])  # per class (predicted) or per group: the second is harder
    exceeded = covered = 0
    for _ in range(TRIALS):
        n = 1500
        conf = rng.uniform(0, 1, n)
        unit = rng.integers(0, 2, n)
        a = rates[unit] if scope != "global" else np.full(n, rates[0])
        wrong = rng.uniform(0, 1, n) < a * (1 - conf) ** 2
        scored = scored_from(conf, ~wrong, groups=unit if scope == "per_group" else None,
                             pred=unit if scope == "per_class" else None)  # fmt: skip
        fit = sel.fit_risk(sel.rank(scored), TARGET, DELTA, scope=scope)  # type: ignore[arg-type]
        if scope == "per_class":
            risks = [_true_risk(rates[c], t) for c, t in enumerate(fit.thresholds.class_thresholds)]
        elif scope == "per_group":
            risks = [_true_risk(r, fit.thresholds.global_threshold) for r in rates]
        else:
            risks = [_true_risk(rates[0], fit.thresholds.global_threshold)]
        exceeded += max(risks) > TARGET
        covered += fit.val_coverage
    assert exceeded / TRIALS <= DELTA + SLACK
    assert covered / TRIALS > 0.15  # and the fits are not trivially empty (0.21-0.64 seen)


def test_check_on_test_reports_each_unit() -> None:
    scored = scored_from(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True]))
    fit = sel.fit_risk(sel.rank(scored), 0.4)
    report = sel.check_on_test(fit, scored)
    assert report["coverage"] == 1.0 and report["selective_risk"] == 0.25 and report["held"]


# ------------------------------------------------------------------------- weights and agreement curves


def test_class_weights_fitted_on_val_follow_the_stated_rule() -> None:
    scored = scored_from(np.array([0.9, 0.9, 0.45, 0.45, -np.inf]), np.ones(5, bool),
                         pred=np.array([0, 0, 1, 1, 2]), k=4)  # fmt: skip
    # Class 2 is only ever predicted on a sample the rule cannot accept and class 3 never: weight 1.
    assert sel.fit_class_weights(scored).tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0])


def test_agreement_curve_matches_a_loop() -> None:
    scored = sel.score("product", *make_inputs(5, 10, n=200, ties=True))
    ranking = sel.rank(scored)
    curve = sel.risk_coverage(ranking, 10_000)
    got = sel.agreement_along(ranking, curve)
    for t, value in zip(curve.threshold, got, strict=True):
        acc = scored.confidence >= t
        assert value == pytest.approx(scored.agree[acc].mean())


def test_tied_areas_are_the_mean_over_every_tie_breaking_order() -> None:
    conf = np.array([0.9, 0.7, 0.7, 0.7, 0.5, 0.5, -np.inf])
    correct = np.array([True, False, True, True, False, True, False])
    n = len(conf)
    aurcs, augrcs = [], []
    for order in itertools.permutations(range(n - 1)):  # every order of the 6 acceptable samples
        ranked = sorted(order, key=lambda i: -conf[i])  # a stable sort: ties keep this order
        wrong = np.cumsum([not correct[i] for i in ranked])
        k = np.arange(1, n)
        tail = (1 - (n - 1) / n) * wrong[-1] / (n - 1)
        aurcs.append(float(np.sum(wrong / k) / n + tail))
        augrcs.append(float(np.sum(wrong) / n**2 + (1 - (n - 1) / n) * wrong[-1] / n))
    summary = sel.summarize(sel.rank(scored_from(conf, correct)))
    assert summary.aurc == pytest.approx(np.mean(aurcs), abs=1e-12)
    assert summary.augrc == pytest.approx(np.mean(augrcs), abs=1e-12)
