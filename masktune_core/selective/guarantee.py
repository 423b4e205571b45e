"""Fit thresholds to a target selective risk, optionally with a guarantee (Geifman & El-Yaniv 2017, SGR).

Three scopes, all on the validation split:

- ``global``: one threshold t; the selective risk of everything accepted is <= r*.
- ``per_class``: one threshold t_c per *predicted* class; the risk of the accepted samples predicted as c
  is <= r* for every class c (so the overall risk is too). The predicted class, not the label, is what a
  class threshold acts on.
- ``per_group``: one global threshold; the risk of every group's accepted samples is <= r*. A group with
  nothing accepted has no selective risk to bound; it is listed in ``fully_rejected_groups``.

Without a guarantee (``delta=None``) a fit takes the largest coverage whose *empirical* val risk meets the
target (every candidate threshold is scanned). With ``delta``, it follows SGR: the candidate thresholds are
searched by bisection, at most k = ceil(log2(J + 1)) of the J candidates are tested, and a candidate
passes when the one-sided Clopper-Pearson upper bound of its risk at confidence 1 - delta / (k * s) is
<= r*, where s is the number of classes (per class) or groups (per group) bounded together, else 1. The
union bound over the k * s tests gives: with probability >= 1 - delta over the draw of val, the true risk
of the returned thresholds is <= r* (for every class or group in scope). Bisection assumes the bound grows
with coverage, as SGR does; the guarantee itself does not rest on it.

Candidates are the operating points a threshold in [0, 1] can reach, tie blocks whole (keys above 1,
possible with weights below 1, merge into t = 1). When no candidate passes, ``feasible`` is False and the
threshold is 1, the strictest; any sample still accepted there is reported, never hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import betaincinv

from masktune_core.errors import ConfigError
from masktune_core.selective.curves import Ranking, block_ends
from masktune_core.selective.rules import Scored
from masktune_core.selective.thresholds import Thresholds, accepted, number

Scope = Literal["global", "per_class", "per_group"]
SCOPES: tuple[str, ...] = ("global", "per_class", "per_group")


def clopper_pearson_upper(errors: Any, n: Any, delta: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on a binomial rate at confidence 1 - delta: the b with
    P(Binomial(n, b) <= errors) = delta. 1 when errors == n; 0 when n == 0 (nothing to bound)."""
    e, size = np.asarray(errors, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = betaincinv(e + 1, np.maximum(size - e, 1e-300), 1 - delta)
    return np.where(size == 0, 0.0, np.where(e >= size, 1.0, bound))


def check_risk_target(target_risk: Any, delta: Any) -> tuple[float, float | None]:
    """Validate (target_risk, delta): both in (0, 1), delta may be None (no guarantee)."""
    risk = number("target_risk", target_risk)
    if not 0.0 < risk < 1.0:
        raise ConfigError("target_risk", f"must lie in (0, 1), got {risk}")
    if delta is None:
        return risk, None
    d = number("delta", delta)
    if not 0.0 < d < 1.0:
        raise ConfigError("delta", f"must lie in (0, 1), got {d}")
    return risk, d


@dataclass(frozen=True)
class RiskFit:
    """Thresholds fitted on val to ``target_risk`` (with ``delta`` when guaranteed).

    ``parts`` has one entry per bounded unit (the whole split, each predicted class or each group):
    ``{"key", "n", "n_accepted", "risk", "bound"}``, where ``bound`` is the Clopper-Pearson bound used
    (the empirical risk without a guarantee; None when nothing is accepted)."""

    scope: str
    target_risk: float
    delta: float | None
    thresholds: Thresholds
    feasible: bool
    val_coverage: float
    val_risk: float | None
    val_bound: float | None
    tests: int
    delta_per_test: float | None  # per class in ``parts`` for the per-class scope
    parts: list[dict[str, Any]] = field(default_factory=list)
    fully_rejected_groups: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "target_risk": self.target_risk,
            "delta": self.delta,
            "feasible": self.feasible,
            "global_threshold": self.thresholds.global_threshold,
            "per_class": list(self.thresholds.per_class),
            "weights": list(self.thresholds.weights),
            "val_coverage": self.val_coverage,
            "val_selective_risk": self.val_risk,
            "val_risk_upper_bound": self.val_bound,
            "bound_tests": self.tests,
            "delta_per_test": self.delta_per_test,
            "parts": self.parts,
            "fully_rejected_groups": self.fully_rejected_groups,
        }


def _candidates(keys: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(threshold, n accepted, n wrong) at every operating point of a sorted key segment."""
    clipped = np.minimum(keys, 1.0)
    ends = block_ends(clipped)
    return clipped[ends], ends + 1, np.cumsum(errors)[ends]


def _search(passes: Any, count: int, guaranteed: bool) -> tuple[int, int]:
    """(index of the last passing candidate or -1, number of candidates tested).

    With a guarantee: SGR's bisection over the ``count`` candidates (assumes passing is monotone).
    Without: a scan for the largest passing index."""
    if not guaranteed:
        ok = [j for j in range(count) if passes(j)]
        return (ok[-1] if ok else -1), count
    lo, hi, tested = -1, count, 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tested += 1
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo, tested


def _tests_for(count: int) -> int:
    return max(1, math.ceil(math.log2(count + 1)))


def _bound(errors: Any, n: Any, delta: float | None) -> np.ndarray:
    e, size = np.asarray(errors, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if delta is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(size > 0, e / np.maximum(size, 1), 0.0)
    return clopper_pearson_upper(e, size, delta)


def _fit_segment(
    keys: np.ndarray, errors: np.ndarray, target: float, delta: float | None
) -> tuple[float, int, int, float | None, bool, int, float | None]:
    """One threshold for one sorted segment: (t, n accepted, n wrong, bound, feasible, tests, delta per
    test)."""
    thresholds, n_acc, n_err = _candidates(keys, errors)
    count = len(thresholds)
    per_test = None if delta is None else delta / _tests_for(count)

    def passes(j: int) -> bool:
        return float(_bound(n_err[j], n_acc[j], per_test)) <= target

    j, tested = _search(passes, count, delta is not None)
    if j < 0:
        # The strictest threshold; it still accepts any sample whose key reaches 1.
        k = np.count_nonzero(keys >= 1.0)
        e = int(np.count_nonzero(errors[:k]))
        bound = float(_bound(e, k, per_test)) if k else None
        return 1.0, int(k), e, bound, False, tested, per_test
    bound = float(_bound(n_err[j], n_acc[j], per_test))
    return float(thresholds[j]), int(n_acc[j]), int(n_err[j]), bound, True, tested, per_test


def fit_risk(
    ranking: Ranking, target_risk: float, delta: float | None = None, scope: Scope = "global"
) -> RiskFit:
    """Fit on the ranking's split (use val) to ``target_risk``; see the module docstring for each scope."""
    target, d = check_risk_target(target_risk, delta)
    if scope not in SCOPES:
        raise ConfigError("scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
    scored, weights = ranking.scored, ranking.weights
    if scope == "per_class":
        return _fit_per_class(ranking, target, d)
    if scope == "per_group":
        if scored.group_index is None:
            raise ConfigError("per_group", "this split has no groups")
        return _fit_per_group(ranking, target, d)
    t, n_acc, n_err, bound, feasible, tested, per_test = _fit_segment(ranking.keys, ranking.errors, target, d)
    thresholds = Thresholds.build(scored.num_classes, t, weights=weights)
    return RiskFit(
        "global", target, d, thresholds, feasible, n_acc / scored.n,
        n_err / n_acc if n_acc else None, bound, tested, per_test,
        [{"key": "all", "n": scored.n, "n_accepted": n_acc, "risk": n_err / n_acc if n_acc else None,
          "bound": bound}],
    )  # fmt: skip


def _fit_per_class(ranking: Ranking, target: float, delta: float | None) -> RiskFit:
    scored = ranking.scored
    k = scored.num_classes
    pred = scored.pred[ranking.order]
    share = None if delta is None else delta / k
    per_class, parts, tests, total_acc, total_err, feasible = [], [], 0, 0, 0, True
    for c in range(k):
        members = pred == c
        t, n_acc, n_err, bound, ok, tested, per_test = _fit_segment(
            ranking.keys[members], ranking.errors[members], target, share
        )
        per_class.append(t)
        tests += tested
        feasible &= ok or n_acc == 0
        total_acc, total_err = total_acc + n_acc, total_err + n_err
        parts.append({
            "key": c, "n": int(np.count_nonzero(scored.pred == c)), "n_accepted": n_acc,
            "risk": n_err / n_acc if n_acc else None, "bound": bound, "delta_per_test": per_test,
        })  # fmt: skip
    thresholds = Thresholds.build(k, max(per_class), per_class, ranking.weights)
    bounds = [p["bound"] for p in parts if p["bound"] is not None]
    return RiskFit(
        "per_class", target, delta, thresholds, feasible, total_acc / scored.n,
        total_err / total_acc if total_acc else None, max(bounds) if bounds else None, tests,
        None, parts,
    )  # fmt: skip


def _fit_per_group(ranking: Ranking, target: float, delta: float | None) -> RiskFit:
    scored = ranking.scored
    n_groups = len(scored.group_ids)
    thresholds_c, n_acc, _ = _candidates(ranking.keys, ranking.errors)
    count = len(thresholds_c)
    # Cumulative accepted and wrong counts per group at every candidate: [count, G].
    onehot = np.eye(n_groups)[scored.group_index[ranking.order]]
    cum_n = np.cumsum(onehot, axis=0)[n_acc - 1] if count else np.zeros((0, n_groups))
    cum_e = np.cumsum(onehot * ranking.errors[:, None], axis=0)[n_acc - 1] if count else cum_n
    per_test = None if delta is None else delta / (_tests_for(count) * n_groups)

    def passes(j: int) -> bool:
        return float(_bound(cum_e[j], cum_n[j], per_test).max()) <= target

    j, tested = _search(passes, count, delta is not None)
    feasible = j >= 0
    t = float(thresholds_c[j]) if feasible else 1.0
    thresholds = Thresholds.build(scored.num_classes, t, weights=ranking.weights)
    acc = accepted(scored, thresholds)
    parts, rejected = [], []
    for g, gid in enumerate(scored.group_ids):
        members = scored.group_index == g
        a, e = int((acc & members).sum()), int((acc & members & ~scored.correct).sum())
        if a == 0:
            rejected.append(int(gid))
        parts.append({
            "key": int(gid), "n": int(members.sum()), "n_accepted": a, "risk": e / a if a else None,
            "bound": float(_bound(e, a, per_test)) if a else None,
        })  # fmt: skip
    n_a, n_e = int(acc.sum()), int((acc & ~scored.correct).sum())
    bounds = [p["bound"] for p in parts if p["bound"] is not None]
    return RiskFit(
        "per_group", target, delta, thresholds, feasible, n_a / scored.n, n_e / n_a if n_a else None,
        max(bounds) if bounds else None, tested, per_test, parts, rejected,
    )  # fmt: skip


def check_on_test(fit: RiskFit, test: Scored) -> dict[str, Any]:
    """Apply a fit to the test split and say whether its target held there, unit by unit.

    ``held`` is True when every bounded unit's test selective risk is <= the target (a unit with nothing
    accepted has no risk and does not fail). A guarantee is about the true risk, so a test split, a
    finite sample of its own, can miss the target now and then even when the guarantee holds."""
    acc = accepted(test, fit.thresholds)
    wrong = acc & ~test.correct
    if fit.scope == "per_class":
        index, keys = test.pred, range(test.num_classes)
    elif fit.scope == "per_group":
        if test.group_index is None:
            raise ConfigError("per_group", "the test split has no groups")
        index, keys = test.group_index, [int(g) for g in test.group_ids]
    else:
        index, keys = np.zeros(test.n, dtype=np.int64), ["all"]
    units = []
    for i, key in enumerate(keys):
        members = index == i
        a, e = int((acc & members).sum()), int((wrong & members).sum())
        risk = e / a if a else None
        units.append(
            {"key": key, "n_accepted": a, "risk": risk, "held": risk is None or risk <= fit.target_risk}
        )
    n_a = int(acc.sum())
    return {
        "coverage": n_a / test.n,
        "n_accepted": n_a,
        "selective_risk": int(wrong.sum()) / n_a if n_a else None,
        "held": all(u["held"] for u in units),
        "units": units,
    }
