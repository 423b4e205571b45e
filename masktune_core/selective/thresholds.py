"""Operating points: validated thresholds and weights, which samples they accept, and every metric there."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from masktune_core.errors import ConfigError
from masktune_core.selective.rules import Scored

# ----------------------------------------------------------------------------------------- thresholds


def number(field_name: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ConfigError(field_name, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(field_name, f"must be finite, got {v}")
    return v


def unit(field_name: str, value: Any) -> float:
    v = number(field_name, value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(field_name, f"must lie in [0, 1], got {v}")
    return v


def positive(field_name: str, value: Any) -> float:
    v = number(field_name, value)
    if v <= 0.0:
        raise ConfigError(field_name, f"must be > 0, got {v}")
    return v


def entries(field_name: str, values: Any, expected: int | None) -> list[Any]:
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence | np.ndarray):
        raise ConfigError(field_name, f"must be a list with one entry per class, got {values!r}")
    items = list(values)
    if expected is not None and len(items) != expected:
        raise ConfigError(field_name, f"has {len(items)} entries, expected {expected} (one per class)")
    if not items:
        raise ConfigError(field_name, "is empty; expected one entry per class")
    return items


def weights_array(weights: Sequence[float] | np.ndarray | None, num_classes: int) -> np.ndarray:
    if weights is None:
        return np.ones(num_classes)
    values = entries("weights", weights, num_classes)
    return np.array([positive(f"weights[{c}]", w) for c, w in enumerate(values)])


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
            positive(f"weights[{c}]", w) for c, w in enumerate(entries("weights", self.weights, None))
        )
        per_class = tuple(
            None if t is None else unit(f"per_class[{c}]", t)
            for c, t in enumerate(entries("per_class", self.per_class, len(weights)))
        )
        object.__setattr__(self, "global_threshold", unit("global_threshold", self.global_threshold))
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
            tuple(entries("per_class", per_class, num_classes)),
            tuple(entries("weights", weights, num_classes)),
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
    ``per_group`` likewise for every group present ({} without groups),
    ``fully_rejected_groups`` (the groups present with nothing accepted, sorted) and
    ``worst_group_accuracy_on_accepted``: the minimum over the groups present, None when any group is
    fully rejected (its accuracy on accepted is undefined, and skipping it would let rejecting a whole
    group *raise* the figure) or when the split has no groups.
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
    out["fully_rejected_groups"] = [g for g, v in out["per_group"].items() if v["n_accepted"] == 0]
    group_acc = [g["accuracy_on_accepted"] for g in out["per_group"].values()]
    defined = group_acc and not out["fully_rejected_groups"]
    out["worst_group_accuracy_on_accepted"] = min(group_acc) if defined else None
    return out
