"""Summary metrics of one rule's risk-coverage curve, and their seeded bootstrap intervals.

Conventions (stated once here; the page and docs/ repeat them in one line each):

- **Prefixes.** Without ties, the risk over the coverage slot ((k - 1) / n, k / n] is that of the k most
  confident samples, e_k / k (e_k wrong among them): the usual per-prefix step curve.
- **Ties are blocks.** Samples with equal keys (``confidence / w[pred]``) are accepted together or not at
  all: operating points (and curve points) sit at block ends only. Inside a block of s samples holding b
  errors, the prefix k = a + i counts e_a + i * b / s errors, the mean over every order of the tied
  samples, so every area below is the mean of the per-prefix area over all tie-breaking orders:
  independent of the input order, and unbiased by the duplicates of a bootstrap resample.
- **Full range [0, 1].** A rule that can accept only m < n samples (the agreement rule never accepts a
  disagreement) stops at coverage a = m / n. Beyond it, it accepts nothing more, so its selective risk
  stays the risk at a: r(c) = e_m / m for c in (a, 1]. ``aurc`` is the integral of r over [0, 1].
- **Common range [0, a].** ``aurc_common`` is the mean of r over [0, a], i.e. (1 / a) times its
  integral, so rules are compared on a coverage range every one of them reaches.
- **AUGRC** (Traub et al., NeurIPS 2024) integrates the generalized risk g(c) = (wrong and accepted) / n,
  the share of *all* samples that are undetected failures, over [0, 1] with the same blocks and the same
  flat continuation past a.
- **E-AURC** is ``aurc`` minus ``aurc_optimal``: the full-range AURC the same rule would get if its
  confidence put every correct acceptable sample above every wrong one (same n, m and errors). It is
  never negative.

``Curve.aurc_reachable`` (the curve's own number, averaged over its reachable range [0, m / n] only)
integrates the block's end risk over the whole block instead; without ties the two conventions agree.

Every value is None ("undefined", never 0) when the rule accepts nothing at any threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import digamma

from masktune_core.errors import ConfigError
from masktune_core.selective.curves import Ranking, block_ends
from masktune_core.selective.thresholds import Thresholds, accepted, number

MIN_RESAMPLES = 1000
DEFAULT_SEED = 0
_DIRECT_TERMS = 3  # harmonic gaps of up to this many terms are summed directly (see _harmonic_gap)
_CELLS_PER_CHUNK = 2_000_000  # resampled indices held at once: bounds the memory of a bootstrap chunk


@dataclass(frozen=True)
class Summary:
    """The curve's summary numbers (see the module docstring for each definition)."""

    aurc: float | None
    aurc_common: float | None
    common_coverage: float | None
    aurc_optimal: float | None
    eaurc: float | None
    augrc: float | None
    max_coverage: float
    n: int


def _harmonic_gap(a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """H_{a+q} - H_a, elementwise, for whole numbers a >= 0 and q >= 0.

    Most blocks of a bootstrap resample hold 0 to 3 samples (Poisson(1) counts), so their few terms are
    summed directly and the digamma function, the costly part of a bootstrap, is only evaluated beyond."""
    gap = np.zeros_like(a, dtype=np.float64)
    for i in range(1, _DIRECT_TERMS + 1):
        gap += (q >= i) / (a + i)
    wide = q > _DIRECT_TERMS
    gap[wide] = digamma(a[wide] + q[wide] + 1) - digamma(a[wide] + 1)
    return gap


def _slot_sums(a: np.ndarray, alpha: np.ndarray, beta: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, ...]:
    """Over the prefixes k = a + 1 .. a + q of a tie block whose expected error count grows linearly,
    e_k = alpha + beta * (k - a): (sum of e_k / k, sum of e_k), in closed form."""
    return (alpha - beta * a) * _harmonic_gap(a, q) + beta * q, q * alpha + beta * q * (q + 1) / 2


def _areas(counts: np.ndarray, errors: np.ndarray, ends: np.ndarray, n: int, upto: float | None) -> dict:
    """Every summary for B weightings of the m ranked samples at once.

    ``counts`` [B, m] holds each ranked sample's multiplicity (1 for the data itself, a bootstrap draw
    otherwise); the split always has n samples, acceptable or not. Returns arrays of length B, NaN where a
    weighting accepts nothing. A resample's duplicates are ties like any other, so the tie convention
    keeps a bootstrap of the areas unbiased by them.
    """
    cum_n = np.cumsum(counts, axis=1)[:, ends]
    cum_e = np.cumsum(counts * errors, axis=1)[:, ends]
    start = np.concatenate([np.zeros((len(cum_n), 1)), cum_n[:, :-1]], axis=1)
    alpha = np.concatenate([np.zeros((len(cum_e), 1)), cum_e[:, :-1]], axis=1)
    size = cum_n - start
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = np.where(size > 0, (cum_e - alpha) / np.maximum(size, 1), 0.0)
        by_risk, by_errors = _slot_sums(start, alpha, beta, size)
        m, e = cum_n[:, -1], cum_e[:, -1]
        last = np.where(m > 0, e / m, np.nan)
        tail = 1.0 - m / n
        aurc = by_risk.sum(axis=1) / n + tail * last
        augrc = by_errors.sum(axis=1) / n**2 + tail * np.where(m > 0, e / n, np.nan)
        # Perfect ranking: prefix k (of m) holds max(0, k - (m - e)) errors; sum_k of that over k is
        # e - (m - e) (H_m - H_{m-e}).
        harmonic = digamma(m + 1) - digamma(m - e + 1)
        optimal = (e - (m - e) * harmonic) / n + tail * last
        # E-AURC >= 0 holds exactly (a perfect order minimises every prefix's errors); clip the rounding.
        out = {
            "aurc": aurc,
            "augrc": augrc,
            "aurc_optimal": optimal,
            "eaurc": np.maximum(aurc - optimal, 0.0),
        }
        if upto is not None:
            slots = upto * n
            whole = np.floor(slots + 1e-9)
            frac = max(slots - whole, 0.0)
            # Blocks wholly inside [0, whole] count whole; at most one block per row is cut by it.
            inside = np.where(cum_n <= whole, by_risk, 0.0)
            cut = (start < whole) & (whole < cum_n)
            inside[cut] = _slot_sums(start[cut], alpha[cut], beta[cut], whole - start[cut])[0]
            nxt = whole + 1  # the prefix that the fractional slot, if any, belongs to
            holds = (start < nxt) & (nxt <= cum_n)
            partial = (holds * (alpha + beta * (nxt - start))).sum(axis=1) / nxt
            beyond = np.where(whole >= m, np.clip(slots - m, 0.0, None) * last, frac * partial)
            out["aurc_common"] = (inside.sum(axis=1) + beyond) / slots
    return out


def _check_upto(upto: float | None) -> float | None:
    if upto is None:
        return None
    value = number("common_coverage", upto)
    if not 0.0 < value <= 1.0:
        raise ConfigError("common_coverage", f"must lie in (0, 1], got {value}")
    return value


def _value(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarize(ranking: Ranking, common_coverage: float | None = None) -> Summary:
    """Full-range AURC, AURC on [0, common_coverage] (when given), AUGRC and E-AURC of one ranking."""
    upto = _check_upto(common_coverage)
    n, m = ranking.scored.n, len(ranking.keys)
    if m == 0:
        return Summary(None, None, upto, None, None, None, 0.0, n)
    ends = block_ends(ranking.keys)
    out = _areas(np.ones((1, m)), ranking.errors, ends, n, upto)
    return Summary(
        aurc=_value(out["aurc"][0]),
        aurc_common=None if upto is None else _value(out["aurc_common"][0]),
        common_coverage=upto,
        aurc_optimal=_value(out["aurc_optimal"][0]),
        eaurc=_value(out["eaurc"][0]),
        augrc=_value(out["augrc"][0]),
        max_coverage=m / n,
        n=n,
    )


def common_coverage(rankings: list[Ranking]) -> float:
    """The largest coverage every ranking reaches: the upper end of the common range [0, a]."""
    return min(len(r.keys) / r.scored.n for r in rankings)


def _points(ranking: Ranking) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points a global threshold in [0, 1] can reach: (threshold, n accepted, n wrong) per
    point, coverage increasing. Keys above 1 are merged into the point t = 1, which accepts them all."""
    keys = np.minimum(ranking.keys, 1.0)
    ends = block_ends(keys)
    return keys[ends], ends + 1, np.cumsum(ranking.errors)[ends]


def coverage_at_risk(ranking: Ranking, risk: float) -> dict[str, Any]:
    """The largest coverage whose selective risk on this split is <= ``risk``, and its threshold.

    ``coverage`` and ``threshold`` are None when no threshold reaches that risk."""
    target = number("risk", risk)
    thresholds, n_acc, n_err = _points(ranking)
    ok = np.flatnonzero(n_err <= target * n_acc) if len(n_acc) else np.zeros(0, dtype=np.int64)
    if len(ok) == 0:
        return {"risk": target, "coverage": None, "threshold": None, "selective_risk": None}
    j = int(ok[-1])
    return {
        "risk": target,
        "coverage": int(n_acc[j]) / ranking.scored.n,
        "threshold": float(thresholds[j]),
        "selective_risk": int(n_err[j]) / int(n_acc[j]),
    }


def risk_at_coverage(ranking: Ranking, coverage: float) -> dict[str, Any]:
    """The selective risk at the tightest threshold whose coverage is >= ``coverage``.

    ``selective_risk`` is None when the rule cannot reach that coverage."""
    target = number("coverage", coverage)
    thresholds, n_acc, n_err = _points(ranking)
    j = int(np.searchsorted(n_acc / ranking.scored.n, target, side="left"))
    if j >= len(n_acc):
        return {"coverage": target, "threshold": None, "achieved_coverage": None, "selective_risk": None}
    return {
        "coverage": target,
        "threshold": float(thresholds[j]),
        "achieved_coverage": int(n_acc[j]) / ranking.scored.n,
        "selective_risk": int(n_err[j]) / int(n_acc[j]),
    }


# ------------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval: ``low``..``high`` holds ``level`` of the resampled values.

    ``undefined`` counts the resamples where the value is undefined (nothing accepted); they are left
    out of the percentiles, and both ends are None when every resample is undefined."""

    estimate: float | None
    low: float | None
    high: float | None
    level: float
    resamples: int
    undefined: int
    seed: int


def _interval(values: np.ndarray, estimate: float | None, level: float, seed: int) -> Interval:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return Interval(estimate, None, None, level, len(values), len(values), seed)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), level, len(values), len(values) - len(finite), seed)


def _check_resamples(resamples: int) -> int:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ConfigError("resamples", f"must be an integer >= {MIN_RESAMPLES}, got {resamples!r}")
    return resamples


def bootstrap_summary(
    ranking: Ranking,
    common_coverage: float | None = None,
    resamples: int = MIN_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Bootstrap intervals of :func:`summarize`'s numbers: the split's n samples are resampled with
    replacement ``resamples`` times (numpy's default generator seeded with ``seed``); each resample keeps
    the samples' keys, so tie blocks stay blocks. Costs O(resamples * n): cache it, off the slider path."""
    resamples = _check_resamples(resamples)
    upto = _check_upto(common_coverage)
    point = summarize(ranking, upto)
    n, m = ranking.scored.n, len(ranking.keys)
    names = ["aurc", "augrc", "eaurc", "aurc_optimal", *(["aurc_common"] if upto else [])]
    if m == 0:
        nan = np.full(resamples, np.nan)
        return {k: _interval(nan, None, level, seed) for k in names}
    position = np.full(n, m)  # rank position of each sample; m collects the never-acceptable ones
    position[ranking.order] = np.arange(m)
    ends = block_ends(ranking.keys)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // n)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = position[rng.integers(0, n, size=(rows, n))]
        flat = drawn + (m + 1) * np.arange(rows)[:, None]
        counts = np.bincount(flat.ravel(), minlength=rows * (m + 1)).reshape(rows, m + 1)[:, :m]
        out = _areas(counts.astype(np.float64), ranking.errors, ends, n, upto)
        for k in names:
            parts[k].append(out[k])
    return {k: _interval(np.concatenate(parts[k]), getattr(point, k), level, seed) for k in names}


def bootstrap_point(
    scored: Any,
    thresholds: Thresholds,
    resamples: int = MIN_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Bootstrap intervals of the operating-point numbers of :func:`evaluate`: coverage, rejection rate,
    selective risk, accuracy on accepted, agreement rate and (with groups) worst-group accuracy on
    accepted (undefined in a resample where a group is fully rejected).

    These numbers depend on the samples only through the counts of (group, accepted, correct, agree)
    cells, so resampling the n samples with replacement is exactly a multinomial draw of those counts:
    cheap enough for every slider move."""
    resamples = _check_resamples(resamples)
    acc = accepted(scored, thresholds)
    groups = scored.group_index if scored.group_index is not None else np.zeros(scored.n, dtype=np.int64)
    n_groups = int(groups.max()) + 1 if scored.group_index is not None else 1
    cell = groups * 8 + acc * 4 + scored.correct * 2 + scored.agree
    freq = np.bincount(cell, minlength=8 * n_groups) / scored.n
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(scored.n, freq, size=resamples).reshape(resamples, n_groups, 2, 2, 2)
    own = np.bincount(cell, minlength=8 * n_groups).reshape(1, n_groups, 2, 2, 2)
    has_groups = scored.group_index is not None
    values = _point_values(drawn, scored.n, has_groups)
    estimates = _point_values(own, scored.n, has_groups)
    return {k: _interval(v, _value(estimates[k][0]), level, seed) for k, v in values.items()}


def _point_values(counts: np.ndarray, n: int, has_groups: bool) -> dict[str, np.ndarray]:
    """Operating-point numbers from cell counts [B, group, accepted, correct, agree]; NaN = undefined."""
    n_acc_g = counts[:, :, 1].sum(axis=(2, 3))
    hit_g = counts[:, :, 1, 1].sum(axis=2)
    n_acc, hit = n_acc_g.sum(axis=1), hit_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(n_acc > 0, hit / n_acc, np.nan)
        values = {
            "coverage": n_acc / n,
            "rejection_rate": 1 - n_acc / n,
            "accuracy_on_accepted": accuracy,
            "selective_risk": 1 - accuracy,
            "agreement_rate": counts[..., 1].sum(axis=(1, 2, 3)) / n,
        }
        if has_groups:
            group_acc = np.where(n_acc_g > 0, hit_g / np.maximum(n_acc_g, 1), np.nan)
            present = counts.sum(axis=(2, 3, 4)) > 0
            rejected = (present & (n_acc_g == 0)).any(axis=1)
            worst = np.where(present, group_acc, np.inf).min(axis=1)
            values["worst_group_accuracy_on_accepted"] = np.where(rejected, np.nan, worst)
    return values
