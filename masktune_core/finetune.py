"""The masked finetune: candidates (learning rate x fill) from the same model and masks, each keeping its
best val check, the choice among them, and the RandMask control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from masktune_core import candidates, distributed, masking, models, train, verdict
from masktune_core.context import Context, prefixed, val_probs, validation_scores
from masktune_core.errors import CheckpointError
from masktune_core.runs import LAST_ERM_STATE, write_json


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
    if source == "erm" and setting.start == "last":
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
                **prefixed("train", stats),
                **prefixed("val", validation_scores(ctx, model)),
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
    settings = candidates.candidate_settings(config, iteration)
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
