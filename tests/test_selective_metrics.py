"""Summary metrics, bootstrap intervals and risk fits of masktune_core.selective, against plain loops.

The references walk the samples one prefix at a time and integrate the risk-coverage step curve in
per-sample slices of width 1 / n, a different formulation from the module's per-block vectorised sums.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom

from masktune_core import selective as sel
from masktune_core.errors import ConfigError
from tests.test_selective import make_inputs

TOL = 1e-9

# ------------------------------------------------------------------------------ plain-loop references


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


def ref_summary(keys: list[float], correct: list[bool], upto: float | None = None) -> dict:
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
    close(summary_dict(sel.summarize(ranking, upto)), ref_summary(keys, scored.correct.tolist(), upto))
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
        ref = ref_summary(scored.confidence[idx].tolist(), scored.correct[idx].tolist(), 0.6)
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
