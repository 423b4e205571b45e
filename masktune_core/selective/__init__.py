"""Selective classification over the saved predictions of the ERM and the MaskTune model.

A *rule* turns the two models' softmax outputs into a prediction and a confidence per sample; a
*threshold set* decides which samples are accepted. Everything is vectorised numpy over samples.

Acceptance. Every rule accepts sample i, predicted as class c, iff ``confidence_i / w_c >= t_c``,
where t_c is the class threshold (the global threshold t unless overridden) and w_c > 0 the class
tolerance weight. That is the report's ``confidence >= tau_c`` with ``tau_c = t_c * w_c``; it is
evaluated in the divided form so that a threshold read off a risk-coverage curve (whose points are
values of ``confidence / w``) reproduces that curve's coverage exactly, with no rounding at the
boundary. Global thresholds and class thresholds lie in [0, 1].

Modules: ``rules`` (rules and :func:`score`), ``thresholds`` (operating points and :func:`evaluate`),
``curves`` (ranking, risk-coverage curves, fit to a coverage, agreement curve, tolerance weights),
``metrics`` (full- and common-range AURC, AUGRC, E-AURC, coverage at a risk, risk at a coverage,
bootstrap intervals, with every convention stated there), ``guarantee`` (fit to a target risk, with the
SGR guarantee, globally, per class or per group) and ``sets`` (saved threshold sets).

What to cache in a dashboard (the costs are measured by ``bench/selective.py``):

- once per (rule, split): :func:`score`;
- once per (rule, split, weights): :func:`rank` (the one sort), then the curves, summaries, fits and
  :func:`bootstrap_summary` from it; none of them depends on the thresholds;
- per threshold slider move: :func:`evaluate` and :func:`bootstrap_point` only (plus :func:`accepted`).

Per-class numbers of :func:`evaluate` are grouped by the true label. Coverage is always relative to every
sample of the split (or of the class / group), including samples a rule can never accept.
"""

from masktune_core.selective.curves import (
    DEFAULT_TARGETS,
    MAX_CURVE_POINTS,
    Curve,
    Fit,
    Ranking,
    agreement_along,
    coverage_table,
    fit_class_weights,
    fit_global_threshold,
    rank,
    risk_coverage,
    risk_coverage_by,
)
from masktune_core.selective.guarantee import (
    SCOPES,
    RiskFit,
    check_on_test,
    check_risk_target,
    clopper_pearson_upper,
    fit_risk,
)
from masktune_core.selective.metrics import (
    MIN_RESAMPLES,
    Interval,
    Summary,
    bootstrap_point,
    bootstrap_summary,
    common_coverage,
    coverage_at_risk,
    risk_at_coverage,
    summarize,
)
from masktune_core.selective.rules import RULES, Rule, Scored, score
from masktune_core.selective.sets import FIT_TARGETS, ThresholdSet
from masktune_core.selective.thresholds import Thresholds, accepted, evaluate

__all__ = [
    "DEFAULT_TARGETS",
    "FIT_TARGETS",
    "MAX_CURVE_POINTS",
    "MIN_RESAMPLES",
    "RULES",
    "SCOPES",
    "Curve",
    "Fit",
    "Interval",
    "Ranking",
    "RiskFit",
    "Rule",
    "Scored",
    "Summary",
    "ThresholdSet",
    "Thresholds",
    "accepted",
    "agreement_along",
    "bootstrap_point",
    "bootstrap_summary",
    "check_on_test",
    "check_risk_target",
    "clopper_pearson_upper",
    "common_coverage",
    "coverage_at_risk",
    "coverage_table",
    "evaluate",
    "fit_class_weights",
    "fit_global_threshold",
    "fit_risk",
    "rank",
    "risk_at_coverage",
    "risk_coverage",
    "risk_coverage_by",
    "score",
    "summarize",
]
