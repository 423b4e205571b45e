"""Selective classification over the saved predictions of the ERM and the MaskTune model.

A *rule* turns the two models' softmax outputs into a prediction and a confidence per sample; a
*threshold set* decides which samples are accepted. Everything is vectorised numpy over samples.

Acceptance. Every rule accepts sample i, predicted as class c, iff ``confidence_i / w_c >= t_c``,
where t_c is the class threshold (the global threshold t unless overridden) and w_c > 0 the class
tolerance weight. That is the report's ``confidence >= tau_c`` with ``tau_c = t_c * w_c``; it is
evaluated in the divided form so that a threshold read off a risk-coverage curve (whose points are
values of ``confidence / w``) reproduces that curve's coverage exactly, with no rounding at the
boundary. Global thresholds and class thresholds lie in [0, 1].

What to cache in a dashboard (the costs are measured by ``bench/selective.py``):

- once per (rule, split): :func:`score`;
- once per (rule, split, weights): :func:`rank` (the one sort), then :func:`risk_coverage`,
  :func:`risk_coverage_by`, :func:`fit_global_threshold` and :func:`coverage_table` from it; none of
  them depends on the thresholds;
- per threshold slider move: :func:`evaluate` only (plus :func:`accepted` to list samples).

Per-class numbers are grouped by the true label. Coverage is always relative to every sample of the
split (or of the class / group), including samples a rule can never accept.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from masktune_core.errors import ConfigError

DEFAULT_TARGETS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8)
MAX_CURVE_POINTS = 2000

# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One selection rule. ``predict(p_erm, p_mt, argmax_erm, argmax_mt) -> (pred, confidence)``."""

    name: str
    label: str
    definition: str
    predict: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _take(probs: np.ndarray, index: np.ndarray) -> np.ndarray:
    return probs[np.arange(probs.shape[0]), index].astype(np.float64)


def _predict_agreement(
    p_erm: np.ndarray, p_mt: np.ndarray, arg_erm: np.ndarray, arg_mt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # -inf rather than a mask: no finite threshold accepts it, so one comparison serves every rule.
    confidence = np.where(arg_erm == arg_mt, _take(p_mt, arg_mt), -np.inf)
    return arg_mt, confidence


def _predict_product(
    p_erm: np.ndarray, p_mt: np.ndarray, arg_erm: np.ndarray, arg_mt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # float32 * float32 is exact in float64, so only the softmax itself rounds.
    x = p_erm.astype(np.float64) * p_mt.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    return pred, _take(p, pred)


def _predict_softmax_erm(
    p_erm: np.ndarray, p_mt: np.ndarray, arg_erm: np.ndarray, arg_mt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return arg_erm, _take(p_erm, arg_erm)


def _predict_softmax_mt(
    p_erm: np.ndarray, p_mt: np.ndarray, arg_erm: np.ndarray, arg_mt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return arg_mt, _take(p_mt, arg_mt)


# ``product`` is exactly the reference code's softmax(softmax(erm) * softmax(masktune)): the elementwise
# product of the two probability vectors, then a softmax over it (here in float64). Its inputs lie in
# [0, 1], so the result is nearly flat: a threshold of 0.5 rejects everything when K = 10.
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "agreement",
            "Agreement + per-class thresholds",
            "Predict the MaskTune argmax; accept only if the ERM model predicts the same class and "
            "MaskTune's probability for it reaches that class's threshold.",
            _predict_agreement,
        ),
        Rule(
            "product",
            "Product of both models (reference code)",
            "Predict the argmax of softmax(p_ERM * p_MaskTune); accept if its maximum reaches the "
            "predicted class's threshold. Its confidence lies in [1/K, e/(e+K-1)].",
            _predict_product,
        ),
        Rule(
            "softmax_erm",
            "Softmax response, ERM",
            "Predict the ERM argmax; accept if the ERM model's top probability reaches the class threshold.",
            _predict_softmax_erm,
        ),
        Rule(
            "softmax_masktune",
            "Softmax response, MaskTune",
            "Predict the MaskTune argmax; accept if its top probability reaches the class threshold.",
            _predict_softmax_mt,
        ),
    )
}


def _check_rule(rule: str) -> Rule:
    if rule not in RULES:
        raise ConfigError("rule", f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    return RULES[rule]


# --------------------------------------------------------------------------------------------- scored


@dataclass(frozen=True, eq=False)
class Scored:
    """The per-sample view of one rule on one split. Arrays are read-only so it can be cached.

    ``confidence`` is -inf where the rule can never accept (the agreement rule on a disagreement).
    ``group_ids`` holds the distinct group values (empty without groups) and ``group_index`` the
    position of each sample's group in it.
    """

    rule: str
    num_classes: int
    pred: np.ndarray  # int64 [N]
    confidence: np.ndarray  # float64 [N]
    correct: np.ndarray  # bool [N]
    agree: np.ndarray  # bool [N]: ERM argmax == MaskTune argmax
    labels: np.ndarray  # int64 [N]
    groups: np.ndarray | None  # int64 [N]
    group_ids: np.ndarray  # int64 [G]
    group_index: np.ndarray | None  # int64 [N]

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _check_probs(name: str, probs: Any) -> np.ndarray:
    a = np.asarray(probs)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, K] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected floating-point probabilities, got {a.dtype}")
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"{name}: probabilities must lie in [0, 1] (NaN or out-of-range values found)")
    return a


def _check_index(name: str, values: Any, n: int) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array of shape ({n},), got {a.dtype} {a.shape}")
    return a.astype(np.int64, copy=False)


def score(
    rule: str,
    probs_erm: np.ndarray,
    probs_mt: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
) -> Scored:
    """Apply ``rule`` (a key of :data:`RULES`) to one split's saved softmax outputs [N, K].

    Raises ConfigError for an unknown rule and ValueError when the arrays do not fit together.
    """
    spec = _check_rule(rule)
    p_erm = _check_probs("probs_erm", probs_erm)
    p_mt = _check_probs("probs_mt", probs_mt)
    if p_erm.shape != p_mt.shape:
        raise ValueError(f"probs_erm {p_erm.shape} and probs_mt {p_mt.shape} differ in shape")
    n, k = p_mt.shape
    y = _check_index("labels", labels, n)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels: values must lie in [0, {k - 1}], found {y.min()}..{y.max()}")
    arg_erm = p_erm.argmax(axis=1)
    arg_mt = p_mt.argmax(axis=1)
    pred, confidence = spec.predict(p_erm, p_mt, arg_erm, arg_mt)
    if groups is None:
        g, group_ids, group_index = None, np.zeros(0, dtype=np.int64), None
    else:
        g = _check_index("groups", groups, n)
        group_ids, group_index = np.unique(g, return_inverse=True)
    return Scored(
        rule=rule,
        num_classes=k,
        pred=_frozen(pred.astype(np.int64)),
        confidence=_frozen(confidence),
        correct=_frozen(pred == y),
        agree=_frozen(arg_erm == arg_mt),
        labels=_frozen(y),
        groups=None if g is None else _frozen(g),
        group_ids=_frozen(group_ids.astype(np.int64)),
        group_index=None if group_index is None else _frozen(group_index.astype(np.int64)),
    )


# ----------------------------------------------------------------------------------------- thresholds


def _number(field_name: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ConfigError(field_name, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(field_name, f"must be finite, got {v}")
    return v


def _unit(field_name: str, value: Any) -> float:
    v = _number(field_name, value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(field_name, f"must lie in [0, 1], got {v}")
    return v


def _positive(field_name: str, value: Any) -> float:
    v = _number(field_name, value)
    if v <= 0.0:
        raise ConfigError(field_name, f"must be > 0, got {v}")
    return v


def _entries(field_name: str, values: Any, expected: int | None) -> list[Any]:
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence | np.ndarray):
        raise ConfigError(field_name, f"must be a list with one entry per class, got {values!r}")
    entries = list(values)
    if expected is not None and len(entries) != expected:
        raise ConfigError(field_name, f"has {len(entries)} entries, expected {expected} (one per class)")
    if not entries:
        raise ConfigError(field_name, "is empty; expected one entry per class")
    return entries


def _weights_array(weights: Sequence[float] | np.ndarray | None, num_classes: int) -> np.ndarray:
    if weights is None:
        return np.ones(num_classes)
    entries = _entries("weights", weights, num_classes)
    return np.array([_positive(f"weights[{c}]", w) for c, w in enumerate(entries)])


@dataclass(frozen=True)
class Thresholds:
    """An operating point: accept a sample predicted as c iff ``confidence / weights[c] >= t_c``.

    ``per_class[c]`` is None where class c follows ``global_threshold``. Validated on construction
    (ConfigError naming the field); sequences are stored as tuples so instances compare and hash.
    """

    global_threshold: float
    per_class: tuple[float | None, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        weights = tuple(
            _positive(f"weights[{c}]", w) for c, w in enumerate(_entries("weights", self.weights, None))
        )
        per_class = tuple(
            None if t is None else _unit(f"per_class[{c}]", t)
            for c, t in enumerate(_entries("per_class", self.per_class, len(weights)))
        )
        object.__setattr__(self, "global_threshold", _unit("global_threshold", self.global_threshold))
        object.__setattr__(self, "per_class", per_class)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def build(
        cls,
        num_classes: int,
        global_threshold: float,
        per_class: Sequence[float | None] | None = None,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> Thresholds:
        """Thresholds for ``num_classes`` classes: omitted overrides follow the global one, weights are 1."""
        if per_class is None:
            per_class = (None,) * num_classes
        if weights is None:
            weights = (1.0,) * num_classes
        return cls(
            global_threshold,
            tuple(_entries("per_class", per_class, num_classes)),
            tuple(_entries("weights", weights, num_classes)),
        )

    @property
    def num_classes(self) -> int:
        return len(self.weights)

    @property
    def class_thresholds(self) -> np.ndarray:
        """t_c: the override where set, else the global threshold."""
        return np.array([self.global_threshold if t is None else t for t in self.per_class])

    @property
    def tau(self) -> np.ndarray:
        """The effective per-class threshold on the confidence, tau_c = t_c * w_c."""
        return self.class_thresholds * np.asarray(self.weights)


def _check_classes(scored: Scored, thresholds: Thresholds) -> None:
    if thresholds.num_classes != scored.num_classes:
        raise ConfigError(
            "thresholds",
            f"has {thresholds.num_classes} classes but the predictions have {scored.num_classes}",
        )


def accepted(scored: Scored, thresholds: Thresholds) -> np.ndarray:
    """Boolean [N]: which samples the rule accepts at this operating point."""
    _check_classes(scored, thresholds)
    w = np.asarray(thresholds.weights)
    return scored.confidence / w[scored.pred] >= thresholds.class_thresholds[scored.pred]


# ------------------------------------------------------------------------------------------- evaluate


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _summary(n: int, n_accepted: int, n_correct: int) -> dict[str, Any]:
    accuracy = _ratio(n_correct, n_accepted)
    return {
        "n": n,
        "n_accepted": n_accepted,
        "coverage": _ratio(n_accepted, n),
        "accuracy_on_accepted": accuracy,
        "selective_risk": None if accuracy is None else 1.0 - accuracy,
    }


def _breakdown(
    index: np.ndarray, keys: np.ndarray, acc: np.ndarray, hit: np.ndarray
) -> dict[int, dict[str, Any]]:
    size = len(keys)
    n = np.bincount(index, minlength=size)
    n_acc = np.bincount(index[acc], minlength=size)
    n_hit = np.bincount(index[hit], minlength=size)
    return {int(key): _summary(int(n[i]), int(n_acc[i]), int(n_hit[i])) for i, key in enumerate(keys)}


def evaluate(scored: Scored, thresholds: Thresholds) -> dict[str, Any]:
    """Every metric at one operating point; the only call a threshold slider move needs.

    Returns a JSON-ready dict: ``n``, ``n_accepted``, ``coverage`` (fraction accepted),
    ``rejection_rate`` (1 - coverage), ``accuracy_on_accepted`` and ``selective_risk`` (error on the
    accepted samples; both None when nothing is accepted), ``agreement_rate`` (ERM argmax == MaskTune
    argmax, over all samples), ``per_class`` {true label: {n, n_accepted, coverage,
    accuracy_on_accepted, selective_risk}} for every class (coverage None for an absent class),
    ``per_group`` likewise for every group present ({} without groups) and
    ``worst_group_accuracy_on_accepted`` (minimum over groups with an accepted sample, else None).
    """
    acc = accepted(scored, thresholds)
    hit = acc & scored.correct
    out = _summary(scored.n, int(acc.sum()), int(hit.sum()))
    out["rejection_rate"] = 1.0 - out["coverage"]
    out["agreement_rate"] = float(scored.agree.mean())
    out["per_class"] = _breakdown(scored.labels, np.arange(scored.num_classes), acc, hit)
    if scored.group_index is None:
        out["per_group"] = {}
    else:
        out["per_group"] = _breakdown(scored.group_index, scored.group_ids, acc, hit)
    group_acc = [g["accuracy_on_accepted"] for g in out["per_group"].values()]
    group_acc = [a for a in group_acc if a is not None]
    out["worst_group_accuracy_on_accepted"] = min(group_acc) if group_acc else None
    return out


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
    w = _weights_array(weights, scored.num_classes)
    key = scored.confidence / w[scored.pred]
    candidates = np.flatnonzero(key > -np.inf)
    order = candidates[np.argsort(-key[candidates])]
    return Ranking(scored, _frozen(w), _frozen(order), _frozen(key[order]), _frozen(~scored.correct[order]))


@dataclass(frozen=True, eq=False)
class Curve:
    """A risk-coverage curve along the global threshold t (tau_c = t * w_c).

    There is one point per distinct key (``confidence / w[pred]``) among the m samples the rule can
    accept, in decreasing threshold order (increasing coverage). Point j accepts exactly the samples
    whose key is >= ``threshold[j]``, so setting the global threshold to ``threshold[j]`` (with no
    per-class overrides) reproduces its coverage and risk. A threshold above 1 (possible when some
    w_c < 1) lies beyond the global threshold's range [0, 1]; the slider's end, 1, is the nearest.

    ``aurc`` is the mean selective risk over the sorted prefixes of the m acceptable samples, every
    prefix inside a tie block taking the risk of the whole block:
    ``aurc = sum_j (n_j - n_{j-1}) * risk_j / m`` with n_j the number accepted at point j. Without ties
    this is the standard AURC (mean risk over the m prefixes); in general it is the area under the step
    curve risk(coverage) divided by ``max_coverage`` = m / n, which is 1 for the softmax and product
    rules and the agreement rate for the agreement rule (a disagreement is never accepted). ``aurc`` is
    None when m = 0.

    The arrays hold at most ``max_points`` points evenly spaced along the full curve, first and last
    kept; ``aurc`` and ``n_points`` (the full curve's length) come from the full curve.
    """

    coverage: np.ndarray
    risk: np.ndarray
    accuracy: np.ndarray
    threshold: np.ndarray
    n_accepted: np.ndarray
    aurc: float | None
    max_coverage: float
    n_points: int
    n: int


def _block_ends(keys: np.ndarray) -> np.ndarray:
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
                aurc=float(area[i]) / count if count else None,
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


def _check_target(value: Any) -> float:
    target = _number("target_coverage", value)
    if not 0.0 < target <= 1.0:
        raise ConfigError("target_coverage", f"must lie in (0, 1], got {target}")
    return target


def fit_global_threshold(ranking: Ranking, target_coverage: float) -> Fit:
    """Fit the global threshold to ``target_coverage`` on the ranking's split (use validation).

    Unlike the reference code, which takes the confidence at sorted position round(target * N), one
    sample past the target, this returns the tightest threshold that meets the target.
    """
    target = _check_target(target_coverage)
    keys, n = ranking.keys, ranking.scored.n
    if len(keys) == 0:
        return Fit(0.0, target, 0.0, False, 0.0)
    ends = _block_ends(keys)
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


# ------------------------------------------------------------------------------------- threshold sets

_SET_FIELDS = (
    "name",
    "rule",
    "global_threshold",
    "per_class",
    "weights",
    "fitted_on",
    "target_coverage",
    "created",
)


def _text(field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, f"must be a non-empty string, got {value!r}")
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ThresholdSet:
    """A named, saved operating point of one rule, validated on construction.

    ``fitted_on`` names the split the thresholds were chosen on ("val" is the honest choice);
    ``target_coverage`` is set when the global threshold was fitted to a coverage, else None.
    """

    name: str
    rule: str
    thresholds: Thresholds
    fitted_on: str = "val"
    target_coverage: float | None = None
    created: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        _text("name", self.name)
        _check_rule(_text("rule", self.rule))
        _text("fitted_on", self.fitted_on)
        if not isinstance(self.thresholds, Thresholds):
            raise ConfigError("thresholds", f"must be a Thresholds, got {type(self.thresholds).__name__}")
        if self.target_coverage is not None:
            object.__setattr__(self, "target_coverage", _check_target(self.target_coverage))
        try:
            datetime.fromisoformat(_text("created", self.created))
        except ValueError:
            raise ConfigError("created", f"must be an ISO 8601 time, got {self.created!r}") from None

    def to_json(self) -> str:
        """The set as a JSON object with the keys of ``_SET_FIELDS``; per_class holds null where a
        class follows the global threshold."""
        data = {
            "name": self.name,
            "rule": self.rule,
            "global_threshold": self.thresholds.global_threshold,
            "per_class": list(self.thresholds.per_class),
            "weights": list(self.thresholds.weights),
            "fitted_on": self.fitted_on,
            "target_coverage": self.target_coverage,
            "created": self.created,
        }
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, num_classes: int) -> ThresholdSet:
        """Parse and validate a saved set for a run with ``num_classes`` classes.

        Raises ConfigError naming the offending field (``threshold_set`` when the text is not a JSON
        object)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise ConfigError("threshold_set", f"is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError("threshold_set", f"must be a JSON object, got {type(data).__name__}")
        for key in data:
            if key not in _SET_FIELDS:
                raise ConfigError(str(key), f"unknown field; expected {', '.join(_SET_FIELDS)}")
        for key in _SET_FIELDS:
            if key not in data:
                raise ConfigError(key, "is missing")
        thresholds = Thresholds(
            data["global_threshold"],
            tuple(_entries("per_class", data["per_class"], num_classes)),
            tuple(_entries("weights", data["weights"], num_classes)),
        )
        return cls(
            name=data["name"],
            rule=data["rule"],
            thresholds=thresholds,
            fitted_on=data["fitted_on"],
            target_coverage=data["target_coverage"],
            created=data["created"],
        )
