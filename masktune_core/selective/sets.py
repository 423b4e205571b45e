"""Saved threshold sets: a named operating point of one rule, with where and how it was fitted."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from masktune_core.errors import ConfigError
from masktune_core.selective.curves import check_target
from masktune_core.selective.rules import check_rule
from masktune_core.selective.thresholds import Thresholds, entries, number

_REQUIRED = (
    "name",
    "rule",
    "global_threshold",
    "per_class",
    "weights",
    "fitted_on",
    "target_coverage",
    "created",
)
# Added later; a set saved before them loads with both None (no claim about where it was fitted).
_OPTIONAL = ("run_id", "fit")
_SET_FIELDS = (*_REQUIRED, *_OPTIONAL)
FIT_TARGETS = ("coverage", "risk", "guaranteed_risk")


def _text(field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, f"must be a non-empty string, got {value!r}")
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_fit(fit: Any) -> dict[str, Any] | None:
    """``fit`` describes how the thresholds were fitted: ``{"target": one of FIT_TARGETS, "value": the
    target, ...}`` plus free-form numbers (delta, scope, val bound); None for thresholds set by hand."""
    if fit is None:
        return None
    if not isinstance(fit, Mapping):
        raise ConfigError("fit", f"must be a JSON object or null, got {fit!r}")
    if fit.get("target") not in FIT_TARGETS:
        raise ConfigError("fit.target", f"must be one of {', '.join(FIT_TARGETS)}, got {fit.get('target')!r}")
    number("fit.value", fit.get("value"))
    return dict(fit)


@dataclass(frozen=True)
class ThresholdSet:
    """A named, saved operating point of one rule, validated on construction.

    ``fitted_on`` names the split the thresholds were chosen on ("val" is the honest choice, "manual"
    for thresholds set by hand); ``run_id`` the run whose predictions they were chosen on;
    ``fit`` how (see ``_check_fit``). ``target_coverage`` is set when the global threshold was fitted to
    a coverage, else None. The rule and the weights are the set's own ``rule`` and ``thresholds``.
    """

    name: str
    rule: str
    thresholds: Thresholds
    fitted_on: str = "val"
    target_coverage: float | None = None
    created: str = field(default_factory=_now)
    run_id: str | None = None
    fit: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _text("name", self.name)
        check_rule(_text("rule", self.rule))
        _text("fitted_on", self.fitted_on)
        if self.run_id is not None:
            _text("run_id", self.run_id)
        object.__setattr__(self, "fit", _check_fit(self.fit))
        if not isinstance(self.thresholds, Thresholds):
            raise ConfigError("thresholds", f"must be a Thresholds, got {type(self.thresholds).__name__}")
        if self.target_coverage is not None:
            object.__setattr__(self, "target_coverage", check_target(self.target_coverage))
        try:
            datetime.fromisoformat(_text("created", self.created))
        except ValueError:
            raise ConfigError("created", f"must be an ISO 8601 time, got {self.created!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """The set as a JSON-ready dict with the keys of ``_SET_FIELDS``; per_class holds None where a
        class follows the global threshold."""
        return {
            "name": self.name,
            "rule": self.rule,
            "global_threshold": self.thresholds.global_threshold,
            "per_class": list(self.thresholds.per_class),
            "weights": list(self.thresholds.weights),
            "fitted_on": self.fitted_on,
            "target_coverage": self.target_coverage,
            "created": self.created,
            "run_id": self.run_id,
            "fit": self.fit,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

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
        for key in _REQUIRED:
            if key not in data:
                raise ConfigError(key, "is missing")
        thresholds = Thresholds(
            data["global_threshold"],
            tuple(entries("per_class", data["per_class"], num_classes)),
            tuple(entries("weights", data["weights"], num_classes)),
        )
        return cls(
            name=data["name"],
            rule=data["rule"],
            thresholds=thresholds,
            fitted_on=data["fitted_on"],
            target_coverage=data["target_coverage"],
            created=data["created"],
            run_id=data.get("run_id"),
            fit=data.get("fit"),
        )
