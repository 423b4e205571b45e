"""What the report needs from one finished run: accuracies, verdict, candidates, ERM's val-loss curve, time.

Only reads a run directory (``metrics.json``, ``events.jsonl``); missing optional keys stay ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from masktune_core.runs import Run

MODELS = ("erm", "masktune")
SPLITS = ("val", "test")
MEASURES = ("worst_group_accuracy", "accuracy")


@dataclass
class Plateau:
    """ERM's val loss over its epochs: where it bottomed out and where training stopped."""

    epochs: int
    best_epoch: int
    best_loss: float
    last_loss: float

    @property
    def ratio(self) -> float:
        """Last val loss over the minimum: 1.0 means training ended at the plateau's bottom."""
        return self.last_loss / self.best_loss if self.best_loss > 0 else math.inf


@dataclass
class RunResult:
    run_id: str
    # (split, model, measure) -> value; measure in MEASURES
    scores: dict[tuple[str, str, str], float | None]
    seconds: float | None
    plateau: Plateau | None
    verdict: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds

    def score(self, split: str, model: str, measure: str) -> float | None:
        return self.scores.get((split, model, measure))


def erm_plateau(events: list[dict[str, Any]]) -> Plateau | None:
    """From the ERM epoch events that carry ``val_loss``; None when there are none."""
    curve = [
        (int(event["epoch"]), float(event["val_loss"]))
        for event in events
        if event.get("stage") == "erm" and event.get("kind") == "epoch" and event.get("val_loss") is not None
    ]
    if not curve:
        return None
    best_epoch, best_loss = min(curve, key=lambda point: point[1])
    return Plateau(epochs=curve[-1][0], best_epoch=best_epoch, best_loss=best_loss, last_loss=curve[-1][1])


def stage_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """Each stage's wall seconds, from its timing event."""
    return {
        str(event["stage"]): float(event["seconds"])
        for event in events
        if event.get("kind") == "timing" and "seconds" in event
    }


def run_seconds(events: list[dict[str, Any]]) -> float | None:
    """Sum of the stages' timing events (data loading included)."""
    times = [
        float(event["seconds"]) for event in events if event.get("kind") == "timing" and "seconds" in event
    ]
    return sum(times) if times else None


def read_result(run: Run) -> RunResult | None:
    """None unless the run finished with a metrics.json."""
    metrics = run.metrics()
    if run.status().get("state") != "done" or metrics is None:
        return None
    splits = metrics.get("splits") or {}
    scores = {
        (split, model, measure): (splits.get(split, {}).get(model) or {}).get(measure)
        for split in SPLITS
        for model in MODELS
        for measure in MEASURES
    }
    events = run.events()
    verdict = metrics.get("verdict")
    candidates = metrics.get("candidates")
    return RunResult(
        run_id=run.id,
        scores=scores,
        seconds=run_seconds(events),
        plateau=erm_plateau(events),
        verdict=verdict if isinstance(verdict, dict) else None,
        candidates=candidates if isinstance(candidates, list) else [],
        stage_seconds=stage_seconds(events),
    )


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and the sample standard deviation (n - 1 denominator); std is None for one value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))
