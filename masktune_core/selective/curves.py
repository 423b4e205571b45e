"""Rankings and risk-coverage curves along the global threshold, and fitting a threshold to a coverage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from masktune_core.errors import ConfigError
from masktune_core.selective.rules import Scored, frozen
from masktune_core.selective.thresholds import Thresholds, evaluate, number, weights_array

DEFAULT_TARGETS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8)
MAX_CURVE_POINTS = 2000

# ------------------------------------------------------------------------------------- risk-coverage


@dataclass(frozen=True, eq=False)
class Ranking:
    """The samples a rule can accept, by decreasing ``key = confidence / weights[pred]``.

    This is the one sort behind every curve and fit of a (rule, split, weights); build it with
    :func:`rank` and cache it. A sample with key k is accepted at global threshold t iff k >= t.
    """

    scored: Scored
    weights: np.ndarray  # float64 [K]
    order: np.ndarray  # int64 [m]: sample indices, highest key first
    keys: np.ndarray  # float64 [m]
    errors: np.ndarray  # bool [m]: the prediction is wrong


def rank(scored: Scored, weights: Sequence[float] | np.ndarray | None = None) -> Ranking:
    """Sort one rule's acceptable samples on one split for weights w (default 1; ConfigError if bad)."""
    w = weights_array(weights, scored.num_classes)
    key = scored.confidence / w[scored.pred]
    candidates = np.flatnonzero(key > -np.inf)
    order = candidates[np.argsort(-key[candidates])]
    return Ranking(scored, frozen(w), frozen(order), frozen(key[order]), frozen(~scored.correct[order]))


@dataclass(frozen=True, eq=False)
class Curve:
    """A risk-coverage curve along the global threshold t (tau_c = t * w_c).

    There is one point per distinct key (``confidence / w[pred]``) among the m samples the rule can
    accept, in decreasing threshold order (increasing coverage). Point j accepts exactly the samples
    whose key is >= ``threshold[j]``, so setting the global threshold to ``threshold[j]`` (with no
    per-class overrides) reproduces its coverage and risk. A threshold above 1 (possible when some
    w_c < 1) lies beyond the global threshold's range [0, 1]; the slider's end, 1, is the nearest.

    ``aurc_reachable`` is the mean selective risk over the sorted prefixes of the m acceptable samples,
    every prefix inside a tie block taking the risk of the whole block:
    ``sum_j (n_j - n_{j-1}) * risk_j / m`` with n_j the number accepted at point j, i.e. the area under
    the step curve risk(coverage) divided by ``max_coverage`` = m / n. It averages over [0, m / n]
    only, so it is not comparable between rules that stop at different coverages (the agreement rule
    stops at the agreement rate); compare rules with :func:`masktune_core.selective.summarize`
    (full-range and common-range AURC, AUGRC, E-AURC). None when m = 0.

    The arrays hold at most ``max_points`` points evenly spaced along the full curve, first and last
    kept; ``aurc_reachable`` and ``n_points`` (the full curve's length) come from the full curve.
    """

    coverage: np.ndarray
    risk: np.ndarray
    accuracy: np.ndarray
    threshold: np.ndarray
    n_accepted: np.ndarray
    aurc_reachable: float | None
    max_coverage: float
    n_points: int
    n: int


def block_ends(keys: np.ndarray) -> np.ndarray:
    """Index of the last element of every run of equal keys."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.append(np.flatnonzero(keys[1:] != keys[:-1]), len(keys) - 1)


def _curves(
    keys: np.ndarray, errors: np.ndarray, bounds: np.ndarray, sizes: Sequence[int], max_points: int
) -> list[Curve]:
    """The curves of the consecutive segments ``keys[bounds[i]:bounds[i + 1]]``, each sorted by
    decreasing key; segment i's coverage is relative to ``sizes[i]`` samples.

    All segments are processed in one vectorised pass: a per-class call costs about as much as the
    overall one, whatever the number of classes.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    m = len(keys)
    last = np.zeros(m, dtype=bool)
    if m:
        last[:-1] = keys[1:] != keys[:-1]
        last[bounds[1:] - 1] = True  # an empty segment marks its predecessor's end, already marked
    ends = np.flatnonzero(last)
    segment = np.searchsorted(bounds, ends, side="right") - 1
    start = bounds[segment]
    # Float counts and int32 error sums: int64 -> float conversion is several times slower here.
    n_acc = ends - start + 1.0
    cum = np.cumsum(errors, dtype=np.int32)
    before = np.where(start > 0, cum[start - 1], 0)
    risk = (cum[ends] - before) / n_acc
    step = n_acc.copy()
    step[1:] -= n_acc[:-1]
    firsts = np.flatnonzero(np.diff(segment, prepend=-1))
    step[firsts] = n_acc[firsts]
    area = np.bincount(segment, weights=step * risk, minlength=len(sizes))
    point_bounds = np.searchsorted(segment, np.arange(len(sizes) + 1))
    curves = []
    for i, n in enumerate(sizes):
        lo, hi = int(point_bounds[i]), int(point_bounds[i + 1])
        count = int(bounds[i + 1] - bounds[i])
        points = hi - lo
        keep = (
            lo + np.arange(max_points) * (points - 1) // (max_points - 1)
            if points > max_points
            else slice(lo, hi)
        )
        curves.append(
            Curve(
                coverage=n_acc[keep] / n,
                risk=risk[keep],
                accuracy=1.0 - risk[keep],
                threshold=keys[ends[keep]],
                n_accepted=n_acc[keep].astype(np.int64),
                aurc_reachable=float(area[i]) / count if count else None,
                max_coverage=count / n,
                n_points=points,
                n=int(n),
            )
        )
    return curves


def risk_coverage(ranking: Ranking, max_points: int = MAX_CURVE_POINTS) -> Curve:
    """The risk-coverage curve of one rule on one split along the global threshold (see :class:`Curve`)."""
    bounds = np.array([0, len(ranking.keys)])
    return _curves(ranking.keys, ranking.errors, bounds, [ranking.scored.n], max_points)[0]


def risk_coverage_by(
    ranking: Ranking, by: Literal["class", "group"], max_points: int = MAX_CURVE_POINTS
) -> dict[int, Curve]:
    """One curve per true class, or per group, present in the split; coverage is relative to its size.

    Thresholds are the global ones, so the same slider position is point ``threshold == t`` of every
    curve. The ranking is reused: a stable sort by class keeps each class's samples in key order.
    """
    scored = ranking.scored
    if by == "class":
        index, ids = scored.labels, np.arange(scored.num_classes)
    elif by == "group":
        if scored.group_index is None:
            return {}
        index, ids = scored.group_index, scored.group_ids
    else:
        raise ConfigError("by", f"must be 'class' or 'group', got {by!r}")
    ranked_index = index[ranking.order]
    # A small unsigned type lets numpy use its radix sort for this stable partition.
    by_index = np.argsort(ranked_index.astype(np.min_scalar_type(len(ids))), kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(ranked_index, minlength=len(ids)))))
    sizes = np.bincount(index, minlength=len(ids))
    curves = _curves(ranking.keys[by_index], ranking.errors[by_index], bounds, sizes.tolist(), max_points)
    return {int(key): curve for key, curve, size in zip(ids, curves, sizes, strict=True) if size}


# --------------------------------------------------------------------------------------- fit on val


@dataclass(frozen=True)
class Fit:
    """A global threshold fitted to a target coverage on one split.

    ``threshold`` is the largest t in [0, 1] whose coverage on the fitting split is >= the target. When
    the target exceeds ``max_coverage`` (for the agreement rule: the agreement rate), ``reachable`` is
    False and ``threshold`` is the largest t that reaches ``max_coverage`` (0 when nothing is
    acceptable). ``coverage`` is what the threshold achieves on the fitting split.
    """

    threshold: float
    target_coverage: float
    coverage: float
    reachable: bool
    max_coverage: float


def check_target(value: Any) -> float:
    target = number("target_coverage", value)
    if not 0.0 < target <= 1.0:
        raise ConfigError("target_coverage", f"must lie in (0, 1], got {target}")
    return target


def fit_global_threshold(ranking: Ranking, target_coverage: float) -> Fit:
    """Fit the global threshold to ``target_coverage`` on the ranking's split (use validation).

    Unlike the reference code, which takes the confidence at sorted position round(target * N), one
    sample past the target, this returns the tightest threshold that meets the target.
    """
    target = check_target(target_coverage)
    keys, n = ranking.keys, ranking.scored.n
    if len(keys) == 0:
        return Fit(0.0, target, 0.0, False, 0.0)
    ends = block_ends(keys)
    # Exact integers divided once, as in evaluate(), so "coverage >= target" agrees with it exactly.
    j = int(np.searchsorted((ends + 1) / n, target, side="left"))
    reachable = j < len(ends)
    # Coverage only grows as t falls, so clamping to the legal maximum keeps the target met.
    threshold = min(float(keys[ends[min(j, len(ends) - 1)]]), 1.0)
    achieved = int(np.count_nonzero(keys >= threshold)) / n
    return Fit(threshold, target, achieved, reachable, len(keys) / n)


def coverage_table(
    val: Ranking, test: Scored, targets: Sequence[float] = DEFAULT_TARGETS
) -> list[dict[str, Any]]:
    """Fitted on validation, reported on test: one row per target coverage, with the ranking's weights.

    Row keys: ``target_coverage``, ``threshold`` (fitted on val), ``reachable``, ``val_coverage``,
    ``test_coverage``, ``test_n_accepted``, ``test_selective_risk``, ``test_accuracy_on_accepted``.
    """
    if val.scored.rule != test.rule or val.scored.num_classes != test.num_classes:
        raise ValueError(
            f"validation ({val.scored.rule}, K={val.scored.num_classes}) and test "
            f"({test.rule}, K={test.num_classes}) were scored differently"
        )
    rows = []
    for target in targets:
        fit = fit_global_threshold(val, target)
        result = evaluate(test, Thresholds.build(test.num_classes, fit.threshold, weights=val.weights))
        rows.append(
            {
                "target_coverage": fit.target_coverage,
                "threshold": fit.threshold,
                "reachable": fit.reachable,
                "val_coverage": fit.coverage,
                "test_coverage": result["coverage"],
                "test_n_accepted": result["n_accepted"],
                "test_selective_risk": result["selective_risk"],
                "test_accuracy_on_accepted": result["accuracy_on_accepted"],
            }
        )
    return rows


def agreement_along(ranking: Ranking, points: Curve) -> np.ndarray:
    """Fraction of the accepted samples on which ERM and MaskTune agree, at each point of ``points``
    (a curve of ``ranking``): the agreement curve. A point accepts a prefix of the ranking, so a running
    sum answers it; under the agreement rule it is 1 everywhere."""
    agree = np.cumsum(ranking.scored.agree[ranking.order])
    n = points.n_accepted
    return agree[n - 1] / n if len(n) else np.zeros(0)


def fit_class_weights(scored_val: Scored) -> np.ndarray:
    """Per-class tolerance weights fitted on validation (the report's "more tolerant on hard classes").

    Rule: w_c = the median confidence of the val samples the rule can accept and predicts as c, divided
    by the largest such median; 1 for a class never predicted on an acceptable sample. A class the
    models are typically less sure of gets a proportionally lower threshold tau_c = t * w_c.
    """
    k = scored_val.num_classes
    acceptable = np.isfinite(scored_val.confidence)
    medians = np.full(k, np.nan)
    for c in range(k):
        chosen = acceptable & (scored_val.pred == c)
        if chosen.any():
            medians[c] = np.median(scored_val.confidence[chosen])
    if np.all(np.isnan(medians)):
        return np.ones(k)
    return np.where(np.isnan(medians), 1.0, medians / np.nanmax(medians))
