"""How a run judges MaskTune: the validation score that picks a finetune, and the verdict against ERM.

Both are computed on the val split, never on test, following the group-robustness literature's protocol
(group DRO, JTT and DFR select hyper-parameters on a val split with group labels):

- **Selection score.** Where val has group labels, the worst-group accuracy (the minimum over the groups
  present), ties broken by the mean of the group accuracies. Without group labels, the worst-class
  accuracy, ties broken by plain accuracy.
- **Verdict.** The difference MaskTune − ERM in that score, with a paired bootstrap interval over val
  samples, resampled within each group (or class) so every group keeps its size: "helped" when the whole
  interval is above 0, "hurt" when it is below 0, and "no clear difference" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95
METRIC_TEXT = {
    "worst_group_accuracy": "worst-group accuracy",
    "worst_class_accuracy": "worst-class accuracy",
}


@dataclass(frozen=True)
class Score:
    """A model's validation score: compared as (value, tie_break), higher is better."""

    metric: str  # "worst_group_accuracy" or "worst_class_accuracy"
    value: float
    tie_break: float

    def beats(self, other: Score) -> bool:
        return (self.value, self.tie_break) > (other.value, other.tie_break)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "tie_break": self.tie_break}


def strata(labels: np.ndarray, groups: np.ndarray | None) -> tuple[str, np.ndarray]:
    """The metric's name and the stratum (group, else class) of every sample."""
    if groups is not None:
        return "worst_group_accuracy", groups
    return "worst_class_accuracy", labels


def selection_score(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> Score:
    """The score a finetune candidate is chosen by (see the module docstring)."""
    metric, stratum = strata(labels, groups)
    correct = probs.argmax(axis=1) == labels
    rates = np.array([correct[stratum == s].mean() for s in np.unique(stratum)])
    tie_break = float(rates.mean()) if groups is not None else float(correct.mean())
    return Score(metric, float(rates.min()), tie_break)


def _bootstrap_worst(correct: np.ndarray, stratum: np.ndarray, draws: list[np.ndarray]) -> np.ndarray:
    """Worst-stratum accuracy in each resample; ``draws[i]`` holds [resamples, n_i] indices of stratum i."""
    per_stratum = np.stack([correct[d].mean(axis=1) for d in draws])  # [strata, resamples]
    return per_stratum.min(axis=0)


def judge(
    erm_probs: np.ndarray,
    masktune_probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """The verdict on MaskTune against ERM on val: difference, paired bootstrap interval and label."""
    metric, stratum = strata(labels, groups)
    erm_correct = erm_probs.argmax(axis=1) == labels
    mt_correct = masktune_probs.argmax(axis=1) == labels
    erm_value = selection_score(erm_probs, labels, groups).value
    mt_value = selection_score(masktune_probs, labels, groups).value
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(stratum == s) for s in np.unique(stratum)]
    draws = [m[rng.integers(0, len(m), size=(resamples, len(m)))] for m in members]
    diffs = _bootstrap_worst(mt_correct, stratum, draws) - _bootstrap_worst(erm_correct, stratum, draws)
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(diffs, [tail, 1 - tail]))
    difference = mt_value - erm_value
    if low > 0:
        label, recommendation = "helped", "masktune"
    elif high < 0:
        label, recommendation = "hurt", "erm"
    else:
        label, recommendation = "no clear difference", "erm"
    return {
        "label": label,
        "metric": metric,
        "split": "val",
        "erm": erm_value,
        "masktune": mt_value,
        "difference": difference,
        "interval": [low, high],
        "confidence": confidence,
        "resamples": resamples,
        "recommendation": recommendation,
        "text": verdict_text(label, metric, difference, (low, high), confidence),
    }


def verdict_text(
    label: str, metric: str, difference: float, interval: tuple[float, float], confidence: float
) -> str:
    """One sentence a reader can act on."""
    low, high = (100 * bound for bound in interval)
    change = (
        f"{difference * 100:+.1f} points of val {METRIC_TEXT[metric]} "
        f"({confidence:.0%} interval {low:+.1f} to {high:+.1f})"
    )
    if label == "helped":
        return f"MaskTune helped: {change}."
    if label == "hurt":
        return f"MaskTune hurt: {change}; use the ERM model."
    return f"No clear difference between MaskTune and ERM: {change}; ERM is the simpler choice."


__all__ = ["CONFIDENCE", "RESAMPLES", "Score", "judge", "selection_score", "strata", "verdict_text"]
