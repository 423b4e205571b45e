"""What every stage of a run shares: the run's context, progress and ETA, val scores, and cancellation.

``pipeline`` runs the stages (ERM, masks, evaluation); ``finetune`` holds the masked finetunes. Both read
the run through a ``Context``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from masktune_core import distributed, evaluate, masking, models, train
from masktune_core.config import RunConfig
from masktune_core.data import DatasetBundle
from masktune_core.runs import Run


class Cancelled(Exception):
    """The user asked the job to stop."""


class Progress:
    """Writes stage, overall progress and ETA into status.json (throttled) and prints one line a second."""

    def __init__(self, run: Run, stages: list[tuple[str, float]], echo: Callable[[str], None] | None) -> None:
        self.run = run
        self.weights = dict(stages)
        self.total = sum(self.weights.values())
        self.echo = echo
        self.stage = ""
        self.done = sum(w for s, w in stages if s in run.raw_status().get("stages_done", []))
        self.start_fraction = self.done / self.total
        self.start_time = time.monotonic()
        self.last_write = 0.0
        self.last_echo = 0.0
        self.last_echo_key: tuple[str, Any] = ("", None)
        self.detail: dict[str, Any] = {}

    def begin(self, stage: str) -> None:
        self.stage = stage
        self.detail = {}
        self.update(0.0, force=True)
        self.run.log(f"stage {stage} started")

    def update(self, fraction_of_stage: float, *, force: bool = False, **detail: Any) -> None:
        self.detail.update(detail)
        now = time.monotonic()
        if not force and now - self.last_write < 0.5:
            return
        self.last_write = now
        overall = min((self.done + self.weights.get(self.stage, 0.0) * fraction_of_stage) / self.total, 1.0)
        gained = overall - self.start_fraction
        eta = (now - self.start_time) * (1 - overall) / gained if gained > 0.01 else None
        self.run.update_status(
            stage=self.stage,
            progress=round(overall, 4),
            eta_s=None if eta is None else round(eta, 1),
            **self.detail,
        )
        key = (self.stage, self.detail.get("epoch"))
        if self.echo is not None and (force or key != self.last_echo_key or now - self.last_echo > 5):
            self.last_echo_key, self.last_echo = key, now
            parts = [f"[{self.stage}]", f"{overall:5.1%}"]
            if "epoch" in self.detail:
                parts.append(f"epoch {self.detail['epoch']}/{self.detail.get('epochs', '?')}")
            if eta is not None:
                parts.append(f"ETA {eta:.0f}s")
            self.echo("  ".join(parts))

    def finish(self, stage: str) -> None:
        self.done += self.weights[stage]
        stages_done = [*self.run.raw_status().get("stages_done", []), stage]
        self.run.update_status(stages_done=stages_done)
        self.run.log(f"stage {stage} done")


# ---------------------------------------------------------------------- context shared by the stages
@dataclass
class Context:
    run: Run
    config: RunConfig
    bundle: DatasetBundle
    device: torch.device
    progress: Progress
    should_stop: Callable[[], bool]
    _masks: dict[str, masking.PackedMasks] = field(default_factory=dict)

    def _build_model(self, pretrained: str | None) -> models.Classifier:
        bundle = self.bundle
        return models.build_model(
            self.config.backbone,
            bundle.num_classes,
            bundle.channels,
            bundle.image_size,
            bundle.mean,
            bundle.std,
            pretrained=pretrained,
        )

    def new_model(self) -> models.Classifier:
        """A fresh model on the device, from the pretrained weights where the run names a file."""
        return self._build_model(self.config.pretrained).to(self.device)

    def load_model(self, checkpoint: str) -> models.Classifier:
        """The run's checkpoint ``checkpoint`` on the device (its weights replace any pretrained ones)."""
        model = self._build_model(None)
        models.load_state(model, self.run.checkpoint_path(checkpoint))
        return model.to(self.device)

    def split_metrics(self, model: torch.nn.Module, split_name: str) -> tuple[np.ndarray, dict[str, Any]]:
        """``model``'s probabilities on a split and its accuracy metrics there (no train weighting)."""
        split = self.bundle.splits[split_name]
        probs = train.predict_probs(
            model, split.images, batch_size=self.config.batch_size, device=self.device
        )
        result = evaluate.accuracy_metrics(
            probs,
            split.labels.numpy(),
            None if split.groups is None else split.groups.numpy(),
            class_names=self.bundle.class_names,
            group_names=self.bundle.group_names,
            train_group_fractions=None,
        )
        return probs, result

    def train_epoch(
        self,
        model: torch.nn.Module,
        source: train.BatchSource,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        generator: torch.Generator,
        on_step: Callable[[int, int, float], None],
    ) -> dict[str, float]:
        """One epoch with the run's batch size, augmentation and device, stopping when asked."""
        return train.train_epoch(
            model,
            source,
            optimizer=optimizer,
            scheduler=scheduler,
            batch_size=self.config.batch_size,
            augment=self.bundle.augment,
            device=self.device,
            generator=generator,
            on_step=on_step,
            should_stop=self.check_stop,
        )

    def masks(self, name: str) -> masking.PackedMasks:
        if name not in self._masks:
            self._masks[name] = masking.load_packed_masks(self.run.masks_path(name))
        return self._masks[name]

    def check_stop(self) -> bool:
        """Raise Cancelled when asked to stop; every rank of a distributed run stops at the same call."""
        if distributed.any_rank(self.should_stop()):
            raise Cancelled()
        return False

    def check_stop_here(self) -> None:
        """This rank alone (ranks compute unequal numbers of mask batches, so no collective here)."""
        if self.should_stop():
            raise Cancelled()


def validation_scores(ctx: Context, model: torch.nn.Module) -> dict[str, float | None]:
    """Val accuracy, worst-group accuracy and mean cross-entropy of ``model``."""
    probs, result = ctx.split_metrics(model, "val")
    picked = probs[np.arange(len(probs)), ctx.bundle.splits["val"].labels.numpy()]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return {
        "accuracy": result["accuracy"],
        "worst_group_accuracy": result["worst_group_accuracy"],
        "loss": loss,
    }


def val_probs(ctx: Context, model: torch.nn.Module) -> np.ndarray:
    """Val probabilities [N, K]; in a distributed run each rank predicts a share and every rank gets all."""
    split = ctx.bundle.splits["val"]
    return train.predict_probs(model, split.images, batch_size=ctx.config.batch_size, device=ctx.device)


def prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{key}": value for key, value in values.items()}
