"""The stages of a run: erm -> masks_1 -> finetune_1 [-> masks_2 -> finetune_2 ...] [-> randmask] -> evaluate.

Each stage reads what earlier stages left in the run directory and records itself in
``status.stages_done`` when its outputs are on disk, so a resumed run skips finished stages. ERM also
saves a training state (model, optimizer, scheduler, RNG) every epoch and resumes mid-stage from it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masktune_core import candidates, distributed, evaluate, masking, models, train, verdict
from masktune_core.config import RunConfig
from masktune_core.data import DatasetBundle
from masktune_core.data.base import Split
from masktune_core.data.cache import load_dataset
from masktune_core.errors import CheckpointError, MaskTuneError
from masktune_core.runs import (
    Run,
    atomic_path,
    disk_error,
    now_iso,
    process_start_time,
    write_json,
)

MODEL_NAMES = ("erm", "masktune", "randmask")
# ERM's training state after its last epoch (weights, optimizer, scheduler), kept for --finetune-start last.
LAST_ERM_STATE = "erm_final_state"


class Cancelled(Exception):
    """The user asked the job to stop."""


# ---------------------------------------------------------------------- stage plan and progress
def plan_stages(config: RunConfig) -> list[tuple[str, float]]:
    """Stage names with rough relative costs (one training epoch = 1), used for progress and ETA."""
    stages: list[tuple[str, float]] = [("erm", float(config.epochs))]
    for i in range(1, config.iterations + 1):
        settings = candidates.candidate_settings(config)
        stages += [(f"masks_{i}", 0.4), (f"finetune_{i}", float(sum(s.epochs for s in settings)))]
    if config.randmask:
        stages.append(("randmask", 1.0))
    stages.append(("evaluate", 0.3))
    return stages


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

    def new_model(self) -> models.Classifier:
        return models.build_model(
            self.config.backbone,
            self.bundle.num_classes,
            self.bundle.channels,
            self.bundle.image_size,
            self.bundle.mean,
            self.bundle.std,
            pretrained=self.config.pretrained,
        ).to(self.device)

    def load_model(self, checkpoint: str) -> models.Classifier:
        model = models.build_model(
            self.config.backbone,
            self.bundle.num_classes,
            self.bundle.channels,
            self.bundle.image_size,
            self.bundle.mean,
            self.bundle.std,
        )
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


def dataset_summary(bundle: DatasetBundle) -> dict[str, Any]:
    """What pages need to rebuild models and label numbers without loading the data."""
    train_groups = bundle.splits["train"].groups
    return {
        "name": bundle.name,
        "class_names": bundle.class_names,
        "group_names": bundle.group_names,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "channels": bundle.channels,
        "image_size": bundle.image_size,
        "test_splits": bundle.test_splits,
        "main_test_split": bundle.main_test_split,
        "eval_splits": bundle.eval_splits,
        "split_sizes": {name: len(split) for name, split in bundle.splits.items()},
        "fingerprints": {name: split.fingerprint for name, split in bundle.splits.items()},
        "train_group_counts": None
        if train_groups is None
        else np.bincount(train_groups.numpy(), minlength=len(bundle.group_names or [])).tolist(),
        "skipped_files": bundle.skipped,
    }


# ---------------------------------------------------------------------- stages
def stage_erm(ctx: Context) -> None:
    config, split = ctx.config, ctx.bundle.splits["train"]
    generator = train.seed_everything(config.seed)  # before the model, so --seed fixes its initial weights
    model = ctx.new_model()
    optimizer = train.make_optimizer(config, model, config.lr)
    steps_per_epoch = -(-len(split) // config.batch_size)
    scheduler = train.make_scheduler(config, optimizer, steps_per_epoch * config.epochs)
    state_path = ctx.run.checkpoint_path("erm_last")
    # Ties on the selection score are common (a shortcut model scores exactly the bias ratio on a biased
    # val), so they go to the lower val cross-entropy rather than always to the first epoch.
    start_epoch, best, best_epoch = 0, (-1.0, float("-inf")), 0
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception:  # a pickle refused by weights_only, or a truncated file
            raise CheckpointError(
                f"{state_path}: the saved ERM training state is damaged or holds more than tensors; "
                "delete it to restart ERM"
            ) from None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, best_epoch = (
            int(state["epoch"]),
            (float(state["best"]), -float(state.get("best_loss", float("inf")))),
            int(state.get("best_epoch", state["epoch"])),
        )
        ctx.run.log(f"resuming ERM after epoch {start_epoch}")
    source = train.BatchSource(split.images, split.labels)
    for epoch in range(start_epoch, config.epochs):

        def on_step(step: int, steps: int, loss: float, epoch: int = epoch) -> None:
            if step % max(steps // 20, 1) == 0:
                ctx.run.append_event(
                    {"stage": "erm", "kind": "step", "epoch": epoch + step / steps, "loss": loss}
                )
            ctx.progress.update((epoch + step / steps) / config.epochs, epoch=epoch + 1, epochs=config.epochs)

        stats = ctx.train_epoch(model, source, optimizer, scheduler, generator, on_step)
        val = validation_scores(ctx, model)
        score = val["worst_group_accuracy"] if config.selection == "worst_group" else val["accuracy"]
        improved = score is not None and (score, -val["loss"]) > best
        if improved:
            best, best_epoch = (score, -val["loss"]), epoch + 1
            if distributed.is_main():
                models.save_state(model, ctx.run.checkpoint_path("erm"))
        ctx.run.append_event(
            {
                "stage": "erm",
                "kind": "epoch",
                "epoch": epoch + 1,
                **_prefixed("train", stats),
                **_prefixed("val", val),
                "selected": improved,
            }
        )
        ctx.run.log(
            f"ERM epoch {epoch + 1}/{config.epochs}: train loss {stats['loss']:.4f}, "
            f"val accuracy {val['accuracy']:.4f}" + (" (best so far)" if improved else "")
        )
        training_state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch + 1,
            "best": best[0],
            "best_loss": -best[1],
            "best_epoch": best_epoch,
        }
        if distributed.is_main():
            with atomic_path(state_path) as tmp:
                torch.save(training_state, tmp)
        if config.patience and epoch + 1 - best_epoch >= config.patience and epoch + 1 < config.epochs:
            # Early stopping on the selection score (the same on every rank: val is gathered): the best
            # checkpoint is already saved.
            ctx.run.append_event(
                {"stage": "erm", "kind": "early_stop", "epoch": epoch + 1, "best_epoch": best_epoch}
            )
            ctx.run.log(
                f"ERM stopped early after epoch {epoch + 1}: no better val score since epoch {best_epoch}"
            )
            break
    distributed.barrier()  # every rank has read the training state before it goes
    if distributed.is_main():
        if config.finetune_start == "last":  # the finetune starts from it, optimizer state included
            state_path.replace(ctx.run.checkpoint_path(LAST_ERM_STATE))
        else:
            state_path.unlink(missing_ok=True)


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


def stage_masks(ctx: Context, iteration: int) -> None:
    source = "erm" if iteration == 1 else f"masktune_{iteration - 1}"
    model = ctx.load_model(source)
    split = ctx.bundle.splits["train"]
    config = ctx.config

    def on_batch(done: int, total: int) -> None:
        ctx.check_stop_here()
        ctx.progress.update(done / total)

    # Each rank computes its share of the batches, streamed to disk; the file is assembled once.
    mine = distributed.shard_range(-(-len(split) // config.batch_size))
    batches = masking.iter_masks(
        model,
        split.images,
        method=config.cam_method,
        rule=config.threshold_rule,
        topk_percent=config.topk_percent,
        dilation=config.mask_dilation,
        batch_size=config.batch_size,
        device=ctx.device,
        progress=on_batch,
        batches=mine,
    )
    probs: list[np.ndarray] = []

    def masks_of(batches: Iterator[masking.MaskBatch]) -> Iterator[torch.Tensor]:
        for batch in batches:
            probs.append(batch.probs)
            yield batch.masks

    path = ctx.run.masks_path(f"iter{iteration}")
    shape = (len(split), *split.images.shape[-2:])
    distributed.save_masks(path, masks_of(batches), shape, config.batch_size)
    # The saliency pass already ran the source model over the training split: its predictions [N, K]
    # are kept, so neither the evaluation nor the dashboard has to predict that split again for it.
    mine_probs = np.concatenate(probs) if probs else np.zeros((0, 0), dtype=np.float32)
    all_probs = distributed.gather_parts(mine_probs)
    if not distributed.is_main():
        return
    stored = ctx.run.predictions("train") or _split_arrays(split)
    ctx.run.save_predictions("train", {**stored, f"probs_{source}": all_probs})
    area = ctx.masks(f"iter{iteration}").areas().float() / (split.images.shape[-2] * split.images.shape[-1])
    ctx.run.append_event(
        {
            "stage": f"masks_{iteration}",
            "kind": "masks",
            "mean_area": float(area.mean()),
            "empty_fraction": float((area == 0).float().mean()),
        }
    )
    ctx.run.log(
        f"masks {iteration}: {area.mean():.1%} of pixels masked on average; {int((area == 0).sum())} empty"
    )


@dataclass
class FinetuneResult:
    """What one finetune kept: the val probabilities of the kept point, its epoch, and every check's score."""

    val_probs: np.ndarray
    epoch: float
    path: list[dict[str, Any]]


def finetune(
    ctx: Context,
    source: str,
    masks: masking.PackedMasks | masking.RandomBlocks,
    target: str,
    stage: str,
    seed_offset: int,
    setting: candidates.Setting,
    progress: tuple[int, int] = (0, 1),
    keep_best: bool = False,
) -> FinetuneResult:
    """Finetune checkpoint ``source`` on the masked training split (``setting``: learning rate, fill,
    epochs, val checks per epoch) and save checkpoint ``target`` (rank 0).

    With ``keep_best`` the model is scored on val at every check and the best check is what ``target``
    holds (the finetune's own model selection); otherwise the last one, as in the method. ``progress`` is
    (this pass, passes) of the stage, so a stage of several finetunes reports one bar."""
    config, split = ctx.config, ctx.bundle.splits["train"]
    model = ctx.load_model(source)
    generator = train.seed_everything(config.seed + seed_offset)
    optimizer = train.make_optimizer(config, model, setting.lr)
    if source == "erm" and config.finetune_start == "last":
        carry_last_erm_state(ctx, model, optimizer, setting.lr)
    # A constant small learning rate, as in the method.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    mean = ctx.bundle.mean
    val = ctx.bundle.splits["val"]
    labels, groups = val.labels.numpy(), None if val.groups is None else val.groups.numpy()
    path: list[dict[str, Any]] = []
    best: dict[str, Any] = {}

    def mask_batch(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return masking.apply_masks(images, masks[index], fill=setting.fill, mean=mean)

    def check(epoch: float) -> None:
        probs = val_probs(ctx, model)
        score = verdict.selection_score(probs, labels, groups)
        path.append({"epoch": round(epoch, 4), "val_score": score.as_dict()})
        if not best or not keep_best or score.beats(best["score"]):
            best.update(score=score, probs=probs, epoch=epoch)
            best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    fractions = _check_points(setting.checks if keep_best else 1)
    for epoch in range(setting.epochs):

        def on_step(step: int, steps: int, loss: float, epoch: int = epoch) -> None:
            if step % max(steps // 20, 1) == 0:
                ctx.run.append_event(
                    {
                        "stage": stage,
                        "kind": "step",
                        "epoch": epoch + step / steps,
                        "loss": loss,
                        "lr": setting.lr,
                    }
                )
            done = (progress[0] + (epoch + step / steps) / setting.epochs) / progress[1]
            ctx.progress.update(done, epoch=epoch + 1, epochs=setting.epochs)
            if step in {max(1, round(f * steps)) for f in fractions}:
                check(epoch + step / steps)

        source = train.BatchSource(split.images, split.labels, transform=mask_batch)
        stats = ctx.train_epoch(model, source, optimizer, scheduler, generator, on_step)
        ctx.run.append_event(
            {
                "stage": stage,
                "kind": "epoch",
                "epoch": epoch + 1,
                "lr": setting.lr,
                **_prefixed("train", stats),
                **_prefixed("val", validation_scores(ctx, model)),
            }
        )
    if distributed.is_main():
        model.load_state_dict(best["state"])
        models.save_state(model, ctx.run.checkpoint_path(target))
    return FinetuneResult(best["probs"], round(best["epoch"], 4), path)


def carry_last_erm_state(
    ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float
) -> None:
    """Load ERM's last epoch (weights and optimizer state: momentum, Adam's moments) into ``model`` and
    ``optimizer``, at learning rate ``lr``: the reference code's finetune start (``--finetune-start
    last``), against the default's kept checkpoint with a fresh optimizer."""
    path = ctx.run.checkpoint_path(LAST_ERM_STATE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: ERM's last state is missing; rerun ERM to finetune from it") from None
    except Exception:  # a pickle refused by weights_only, or a truncated file
        raise CheckpointError(f"{path}: ERM's last state is damaged or holds more than tensors") from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr


def _check_points(checks: int) -> list[float]:
    """Fractions of an epoch where val is checked: ``checks`` evenly spaced, the last at the epoch's end."""
    return [k / checks for k in range(1, checks + 1)]


def val_probs(ctx: Context, model: torch.nn.Module) -> np.ndarray:
    """Val probabilities [N, K]; in a distributed run each rank predicts a share and every rank gets all."""
    split = ctx.bundle.splits["val"]
    return train.predict_probs(model, split.images, batch_size=ctx.config.batch_size, device=ctx.device)


def stage_finetune(ctx: Context, iteration: int) -> None:
    """Finetune one candidate per setting (learning rate x fill) from the same model and masks, then keep
    the best on val.

    With ``finetune_selection == "val"`` each candidate keeps its best val check, and the model the
    finetunes start from is a candidate too: if no finetune beats it on val, the run keeps it, and the
    verdict says so. Candidates already on disk (a resumed run) are not trained again.
    """
    config, run = ctx.config, ctx.run
    source = "erm" if iteration == 1 else f"masktune_{iteration - 1}"
    split = ctx.bundle.splits["val"]
    labels = split.labels.numpy()
    groups = None if split.groups is None else split.groups.numpy()
    record = candidates.candidate_record(run)

    def save_record() -> None:
        if distributed.is_main():  # the other ranks keep the same record in memory
            write_json(run.file(candidates.CANDIDATES_FILE), record)

    entries = record.setdefault(str(iteration), {"source": source, "candidates": []})
    if "source_score" not in entries:
        entries["source_score"] = verdict.selection_score(
            val_probs(ctx, ctx.load_model(source)), labels, groups
        ).as_dict()
        entries["mask_effect"] = candidates.mask_effect(ctx, source, ctx.masks(f"iter{iteration}"))
    settings = candidates.candidate_settings(config)
    done = {c["name"] for c in entries["candidates"]}
    val_probs_of: dict[str, np.ndarray] = {}
    for k, setting in enumerate(settings):
        name = candidates.candidate_name(iteration, setting)
        if name in done and run.checkpoint_path(name).exists():
            continue
        result = finetune(
            ctx,
            source,
            ctx.masks(f"iter{iteration}"),
            name,
            f"finetune_{iteration}",
            iteration,
            setting,
            (k, len(settings)),
            keep_best=config.finetune_selection == "val",
        )
        score = verdict.selection_score(result.val_probs, labels, groups)
        val_probs_of[name] = result.val_probs
        entries["candidates"] = [c for c in entries["candidates"] if c["name"] != name]
        entries["candidates"].append(
            {
                "name": name,
                "settings": {**setting.as_dict(), "kept_epoch": result.epoch},
                "val_score": score.as_dict(),
                "path": result.path,
            }
        )
        save_record()
    # Every rank scored the candidates on the same gathered val probabilities, so all keep the same one.
    kept = candidates.choose_candidate(entries, config.finetune_selection)
    if config.finetune_selection == "val" and kept != source:
        best_probs = val_probs_of.get(kept)
        if best_probs is None:  # trained before a resume
            best_probs = val_probs(ctx, ctx.load_model(kept))
        source_probs = val_probs(ctx, ctx.load_model(source))
        kept = candidates.confirm_gain(entries, kept, source_probs, best_probs, labels, groups, config.seed)
    entries["selected"] = kept
    save_record()
    if kept != source:
        reason = " (best on val, a clear gain)"
    elif "best_candidate" in entries:
        reason = f" (the best candidate, {entries['best_candidate']['name']}, was no clear gain on val)"
    else:
        reason = " (no finetune candidate beat it on val)"
    run.log(f"finetune {iteration}: kept {kept}{reason}")
    if distributed.is_main():
        models.save_state(ctx.load_model(kept), ctx.run.checkpoint_path(f"masktune_{iteration}"))
    if iteration == config.iterations and distributed.is_main():
        models.save_state(ctx.load_model(f"masktune_{iteration}"), ctx.run.checkpoint_path("masktune"))


def stage_randmask(ctx: Context) -> None:
    generator = torch.Generator().manual_seed(ctx.config.seed + 7919)
    masks = ctx.masks("iter1")
    random_masks = masking.RandomBlocks(masks.areas(), masks.shape[1:], generator)
    if distributed.is_main():
        chunks = torch.arange(len(masks)).split(ctx.config.batch_size)
        masking.save_masks(ctx.run.masks_path("randmask"), (random_masks[i] for i in chunks), masks.shape)
    # RandMask is finetuned as the candidate the first iteration chose (the first when it kept ERM), with the
    # same choice of its best val check, so only the masks differ.
    first = candidates.candidate_record(ctx.run).get("1", {})
    kept = {c["name"]: c["settings"] for c in first.get("candidates", [])}.get(first.get("selected"))
    settings = candidates.candidate_settings(ctx.config)
    setting = next((s for s in settings if kept and s.as_dict().items() <= kept.items()), settings[0])
    keep_best = ctx.config.finetune_selection == "val"
    finetune(ctx, "erm", random_masks, "randmask", "randmask", 100, setting, keep_best=keep_best)


def stage_evaluate(ctx: Context) -> None:
    bundle, config = ctx.bundle, ctx.config
    # Earlier iterations of iterative MaskTune are reported too, as masktune_1, masktune_2, ...
    earlier = [f"masktune_{i}" for i in range(1, config.iterations)]
    names = [n for n in (*MODEL_NAMES, *earlier) if ctx.run.checkpoint_path(n).exists()]
    trained = {name: ctx.load_model(name) for name in names}
    summary = dataset_summary(bundle)
    fractions = evaluate.group_fractions(
        None if bundle.splits["train"].groups is None else bundle.splits["train"].groups.numpy(),
        len(bundle.group_names or []),
    )
    metrics: dict[str, Any] = {
        "splits": {},
        "definitions": evaluate.DEFINITIONS,
        "main_test_split": bundle.main_test_split,
    }
    for i, split_name in enumerate(bundle.eval_splits):
        split = bundle.splits[split_name]
        arrays = _split_arrays(split)
        labels, groups = arrays["label"], arrays.get("group")
        metrics["splits"][split_name] = {}
        for name, model in trained.items():
            probs = train.predict_probs(model, split.images, batch_size=config.batch_size, device=ctx.device)
            arrays[f"probs_{name}"] = probs
            metrics["splits"][split_name][name] = evaluate.accuracy_metrics(
                probs,
                labels,
                groups,
                class_names=bundle.class_names,
                group_names=bundle.group_names,
                train_group_fractions=fractions,
            )
        ctx.run.save_predictions(split_name, arrays)
        if split_name == "val" and "masktune" in trained:
            metrics["verdict"] = candidates.run_verdict(
                ctx.run, ctx.config.seed, arrays["probs_erm"], arrays["probs_masktune"], labels, groups
            )
        ctx.progress.update((i + 1) / (len(bundle.eval_splits) + 1))
    save_train_predictions(ctx, trained)
    metrics["candidates"] = candidates.candidate_metrics(ctx)
    metrics["dataset"] = summary
    if distributed.is_main():
        write_json(ctx.run.file("metrics.json"), metrics)


def save_train_predictions(ctx: Context, trained: dict[str, models.Classifier]) -> None:
    """The training split's predictions of every model (for the pages, not for metrics): the ones a masks
    stage kept from its saliency pass are reused, the others predicted now."""
    split = ctx.bundle.splits["train"]
    arrays = _split_arrays(split)
    stored = ctx.run.predictions("train") or {}
    for name, model in trained.items():
        kept = stored.get(f"probs_{name}")
        if kept is None or len(kept) != len(split):
            kept = train.predict_probs(
                model, split.images, batch_size=ctx.config.batch_size, device=ctx.device
            )
        arrays[f"probs_{name}"] = kept
    ctx.run.save_predictions("train", arrays)


def _split_arrays(split: Split) -> dict[str, np.ndarray]:
    """A split's ``index``, ``label`` and (if any) ``group``: the leading arrays of a predictions file."""
    arrays: dict[str, np.ndarray] = {"index": np.arange(len(split)), "label": split.labels.numpy()}
    if split.groups is not None:
        arrays["group"] = split.groups.numpy()
    return arrays


STAGES: dict[str, Callable[..., None]] = {
    "erm": stage_erm,
    "masks": stage_masks,
    "finetune": stage_finetune,
    "randmask": stage_randmask,
    "evaluate": stage_evaluate,
}


def _run_stage(ctx: Context, stage: str) -> None:
    kind, _, iteration = stage.partition("_")
    if iteration:
        STAGES[kind](ctx, int(iteration))
    else:
        STAGES[kind](ctx)


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{key}": value for key, value in values.items()}


# ---------------------------------------------------------------------- the whole run
def execute(
    run: Run,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every unfinished stage of ``run``. Returns the final status; never raises for a
    failure inside a stage (the status says ``failed`` with the message), only for a bad config."""
    config = RunConfig.from_dict(run.load_config())
    stages = plan_stages(config)
    if not distributed.is_main():  # the other ranks of a distributed run read the run but never write it
        run, echo = distributed.FollowerRun(run.path), None
    run.update_status(
        state="running",
        pid=os.getpid(),
        pid_start=process_start_time(os.getpid()),
        error=None,
        started=run.raw_status().get("started") or now_iso(),
        finished=None,
    )
    progress = Progress(run, stages, echo)
    try:
        progress.begin("data")
        started = time.monotonic()
        bundle = load_dataset(config.dataset, config.data_options(), echo=echo)
        if distributed.is_main():
            write_json(run.file("dataset.json"), dataset_summary(bundle))
        if bundle.skipped:
            run.log(f"skipped {len(bundle.skipped)} unreadable image(s):\n  " + "\n  ".join(bundle.skipped))
            run.update_status(skipped_files=bundle.skipped)
        run.append_event({"stage": "data", "kind": "timing", "seconds": time.monotonic() - started})
        device = distributed.local_device(train.resolve_device(config.device))
        ctx = Context(run, config, bundle, device, progress, should_stop)
        done = set(run.raw_status().get("stages_done", []))
        for stage, _ in stages:
            if stage in done:
                continue
            ctx.check_stop()
            started = time.monotonic()
            progress.begin(stage)
            _run_stage(ctx, stage)
            distributed.barrier()  # the stage's files are on disk before any rank reads them
            run.append_event({"stage": stage, "kind": "timing", "seconds": time.monotonic() - started})
            progress.finish(stage)
        return run.update_status(state="done", stage=None, progress=1.0, eta_s=0, finished=now_iso())
    except (Cancelled, KeyboardInterrupt, InterruptedError):
        # InterruptedError is an OSError subclass: caught here, first, it reads as the stop it is,
        # never as the disk failure the OSError branch below would report.
        run.log("cancelled by the user")
        return run.update_status(
            state="cancelled", eta_s=None, finished=now_iso(), error="cancelled by the user"
        )
    except MaskTuneError as err:
        run.log(f"failed: {err}")
        return run.update_status(state="failed", eta_s=None, finished=now_iso(), error=str(err))
    except OSError as err:
        message = str(disk_error(Path(err.filename) if err.filename else run.path, err))
        run.log(f"failed: {message}")
        return run.update_status(state="failed", eta_s=None, finished=now_iso(), error=message)
    except Exception as err:  # any other failure must still land in status.json
        run.log("failed with an unexpected error:\n" + traceback.format_exc())
        message = f"{type(err).__name__}: {err} (see log.txt)"
        return run.update_status(state="failed", eta_s=None, finished=now_iso(), error=message)
