"""Selective-classification maths the study needs beyond ``masktune_core.selective``: per-class tolerance
weights fitted on val, and the AURC over a coverage range every rule reaches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from masktune_core import selective as sel

if TYPE_CHECKING:
    from bench.reproduce.analysis import RuleOutcome


def class_weights(scored_val: sel.Scored) -> np.ndarray:
    """Per-class tolerance weights fitted on val: w_c = the median confidence of the acceptable val samples
    predicted as c, over the largest such median (1 for a class never predicted).

    A class the models are typically less sure of gets a proportionally lower threshold tau_c = t * w_c:
    the report's "more tolerant on hard classes", chosen from validation data instead of by hand.
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


def aurc_upto(curve: sel.Curve, coverage: float) -> float | None:
    """Mean selective risk over the accepted prefixes up to ``coverage``: the AURC on [0, coverage].

    ``curve`` must hold every point (``max_points`` above the split size). Over the whole curve this equals
    ``curve.aurc``; restricting every rule to the same range makes rules that stop early comparable.
    """
    per_prefix = np.repeat(curve.risk, np.diff(curve.n_accepted, prepend=0))
    count = min(int(np.floor(coverage * curve.n + 1e-9)), len(per_prefix))
    return float(per_prefix[:count].mean()) if count else None


def common_range(outcome: dict[str, RuleOutcome]) -> float:
    """The coverage every rule reaches on test: the agreement rate (the agreement rules stop there)."""
    return min(o.curve.max_coverage for o in outcome.values())
