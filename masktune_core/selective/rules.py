"""Selection rules: turn the two models' softmax outputs into a prediction and a confidence per sample."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from masktune_core.errors import ConfigError

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


def check_rule(rule: str) -> Rule:
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


def frozen(a: np.ndarray) -> np.ndarray:
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
    spec = check_rule(rule)
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
        pred=frozen(pred.astype(np.int64)),
        confidence=frozen(confidence),
        correct=frozen(pred == y),
        agree=frozen(arg_erm == arg_mt),
        labels=frozen(y),
        groups=None if g is None else frozen(g),
        group_ids=frozen(group_ids.astype(np.int64)),
        group_index=None if group_index is None else frozen(group_index.astype(np.int64)),
    )
