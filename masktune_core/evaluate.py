"""Metrics from saved predictions: accuracy, per class, per group, worst group, three average definitions."""

from __future__ import annotations

from typing import Any

import numpy as np

# Shown beside every number, so nobody has to guess which "average" is meant.
DEFINITIONS = {
    "accuracy": "fraction of the split's samples whose argmax prediction equals the label (plain mean)",
    "worst_group_accuracy": (
        "minimum accuracy over the (class, spurious attribute) groups present in the split"
    ),
    "average_accuracy.plain": "plain mean accuracy over the split's samples (same as accuracy)",
    "average_accuracy.train_weighted": (
        "per-group accuracy weighted by the training split's group proportions (WILDS / group DRO convention)"
    ),
    "average_accuracy.group_mean": "unweighted mean of the per-group accuracies",
}


def accuracy_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    class_names: list[str],
    group_names: list[str] | None,
    train_group_fractions: np.ndarray | None,
) -> dict[str, Any]:
    """Every accuracy the run reports for one model on one split."""
    correct = probs.argmax(axis=1) == labels
    per_class = {
        name: _rate(correct[labels == c]) for c, name in enumerate(class_names) if np.any(labels == c)
    }
    result: dict[str, Any] = {
        "accuracy": float(correct.mean()) if len(correct) else None,
        "n": len(correct),
        "per_class": per_class,
        "worst_group_accuracy": None,
        "per_group": {},
        "average_accuracy": {"plain": float(correct.mean()) if len(correct) else None},
    }
    if groups is None or group_names is None:
        return result
    present = [g for g in range(len(group_names)) if np.any(groups == g)]
    per_group = {group_names[g]: _rate(correct[groups == g]) for g in present}
    group_acc = np.array([per_group[group_names[g]]["accuracy"] for g in present])
    result["per_group"] = per_group
    result["worst_group_accuracy"] = float(group_acc.min()) if len(group_acc) else None
    result["worst_group"] = group_names[present[int(group_acc.argmin())]] if len(group_acc) else None
    result["average_accuracy"]["group_mean"] = float(group_acc.mean()) if len(group_acc) else None
    if train_group_fractions is not None and len(group_acc):
        weights = train_group_fractions[present]
        weighted = float((weights * group_acc).sum() / weights.sum()) if weights.sum() > 0 else None
        result["average_accuracy"]["train_weighted"] = weighted
    return result


def _rate(correct: np.ndarray) -> dict[str, Any]:
    return {"accuracy": float(correct.mean()), "n": len(correct)}


def group_fractions(groups: np.ndarray | None, num_groups: int) -> np.ndarray | None:
    if groups is None or num_groups == 0:
        return None
    counts = np.bincount(groups, minlength=num_groups).astype(np.float64)
    return counts / max(counts.sum(), 1)
