"""Finetune candidates: which were trained, how one is chosen on val, and what the run reports of them.

``candidates.json`` in the run holds, per MaskTune iteration, the source model (ERM, or the previous
iteration), its val score, the mask effect, every candidate's settings and val score, and the one kept.
The choice rule and the verdict are in masktune_core.verdict; this module keeps the bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from masktune_core import masking, train, verdict
from masktune_core.runs import Run, read_json

if TYPE_CHECKING:
    from masktune_core.config import RunConfig
    from masktune_core.context import Context

CANDIDATES_FILE = "candidates.json"


@dataclass(frozen=True)
class Setting:
    """How one finetune candidate trains: learning rate, fill, epochs, val checks per epoch, and where the
    first iteration's finetune starts ("best": the kept ERM checkpoint, a fresh optimizer; "last": ERM's
    last epoch with its optimizer state)."""

    lr: float
    fill: str
    epochs: int = 1
    checks: int = 1
    start: str = "best"

    def as_dict(self) -> dict[str, Any]:
        return {
            "finetune_lr": self.lr,
            "fill": self.fill,
            "epochs": self.epochs,
            "checks": self.checks,
            "start": self.start,
        }


def candidate_settings(config: RunConfig, iteration: int = 1) -> list[Setting]:
    """The run's finetune candidates: every start with every fill and learning rate (with selection "none",
    only the first of each: the method's single finetune). A config saved before fills, epochs and starts
    were options finetunes as it did then: one epoch, its fill, from the kept ERM checkpoint."""
    lrs = config.finetune_lrs or (config.finetune_lr,)
    fills = config.finetune_fills or (config.fill,)
    # Only the first round starts from ERM; a later one starts from the model the round before kept, which
    # has no "last state", so a second start would train the same candidate twice.
    starts = (config.finetune_starts() or ("best",)) if iteration == 1 else ("best",)
    if config.finetune_selection != "val":
        lrs, fills, starts = lrs[:1], fills[:1], starts[:1]
    epochs, checks = config.finetune_epochs or 1, config.finetune_checks or 1
    return [Setting(lr, fill, epochs, checks, start) for start in starts for fill in fills for lr in lrs]


def candidate_name(iteration: int, setting: Setting) -> str:
    """``masktune_<iteration>_<fill>_lr<lr>``, with ``_last`` for a start from ERM's last state."""
    suffix = "_last" if setting.start == "last" else ""
    return f"masktune_{iteration}_{setting.fill}_lr{setting.lr:g}{suffix}"


def candidate_record(run: Run) -> dict[str, Any]:
    """candidates.json: per iteration, the source model's val score, the mask effect and every candidate."""
    return read_json(run.file(CANDIDATES_FILE)) or {}


def choose_candidate(entries: dict[str, Any], selection: str) -> str:
    """The best candidate on val; with selection "val", the source model unless a candidate beats it (the
    pipeline then keeps the candidate only if the gain is clear, see ``stage_finetune``)."""
    scored = [(verdict.Score(**c["val_score"]), c["name"]) for c in entries["candidates"]]
    best_score, best_name = scored[0]
    for score, name in scored[1:]:
        if score.beats(best_score):
            best_score, best_name = score, name
    if selection == "val" and not best_score.beats(verdict.Score(**entries["source_score"])):
        return entries["source"]
    return best_name


def confirm_gain(
    entries: dict[str, Any],
    best: str,
    source_probs: np.ndarray,
    best_probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    seed: int,
) -> str:
    """``best`` if its gain over the source model on val is clear, else the source; records why.

    The best of many candidate checks beats the source on val by chance alone now and then, so a candidate
    replaces it only when the verdict's paired bootstrap interval on val lies above 0. A cue no mask can
    hide (a colour cast) then leaves the run with ERM, unharmed."""
    check = verdict.judge(source_probs, best_probs, labels, groups, seed=seed)
    entries["best_candidate"] = {
        "name": best,
        **{key: check[key] for key in ("label", "metric", "difference", "interval")},
    }
    return best if check["label"] == "helped" else entries["source"]


MASK_EFFECT_SAMPLES = 2048


def mask_effect(ctx: Context, source: str, masks: masking.PackedMasks | torch.Tensor) -> dict[str, float]:
    """The source model's training accuracy on original and on masked images (a fixed subsample).

    Masks work when they hide what the model relies on, so its accuracy falls on masked images. A cue
    spread over the whole image (a colour cast) survives any region mask, and the accuracy stays.
    ``masks`` is indexed by rows of the sample (bit-packed masks unpack only those); the sample is read,
    masked and predicted a chunk at a time, as the split may live on disk."""
    split = ctx.bundle.splits["train"]
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(ctx.config.seed))
    index = index[:MASK_EFFECT_SAMPLES]
    model = ctx.load_model(source)
    correct = {"original": 0, "masked": 0}
    for rows in index.split(4 * ctx.config.batch_size):
        images, labels = split.images[rows], split.labels[rows].numpy()
        masked = masking.apply_masks(images, masks[rows], fill=ctx.config.fill, mean=ctx.bundle.mean)
        for name, batch in (("original", images), ("masked", masked)):
            probs = train.predict_probs(model, batch, batch_size=ctx.config.batch_size, device=ctx.device)
            correct[name] += int((probs.argmax(1) == labels).sum())
    n = max(len(index), 1)
    return {
        "train_accuracy_original": correct["original"] / n,
        "train_accuracy_masked": correct["masked"] / n,
        "n": len(index),
    }


def run_verdict(
    run: Run,
    seed: int,
    erm: np.ndarray,
    masktune: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
) -> dict[str, Any]:
    """The verdict on val, with what a reader needs to trust it: which candidate was kept, and whether the
    masks hid what ERM relied on."""
    result = verdict.judge(erm, masktune, labels, groups, seed=seed)
    record = candidate_record(run)
    rounds = [record[key] for key in sorted(record, key=int)] or [{}]
    first = rounds[0]
    # ERM's weights are the MaskTune model only when every round kept the model it started from.
    result["kept_source"] = all(r.get("selected") == r.get("source") for r in rounds)
    result["mask_effect"] = first.get("mask_effect")
    notes = []
    checks = sum(len(c.get("path") or [None]) for r in rounds for c in r.get("candidates", []))
    if checks > 1 and not result["kept_source"]:
        notes.append(
            f"Val chose this model among {checks} candidate checks, and the verdict is judged on the same "
            "val split, so its gain leans optimistic; the test split, never used to choose, is the "
            "unbiased check."
        )
    if result["kept_source"] and first.get("best_candidate"):
        best = first["best_candidate"]
        low, high = (100 * bound for bound in best["interval"])
        gain = f"{100 * best['difference']:+.1f} points of {verdict.METRIC_TEXT[best['metric']]}"
        later = f" (nor was any candidate of the {len(rounds) - 1} later round(s))" if len(rounds) > 1 else ""
        notes.append(
            f"The best finetune candidate, {best['name']}, beat ERM on val by {gain}, but its 95% interval "
            f"({low:+.1f} to {high:+.1f}) is not above 0: no clear gain{later}, so the run keeps ERM's "
            "weights as its MaskTune model."
        )
    elif result["kept_source"]:
        notes.append(
            "No finetune candidate beat ERM on val, so the run keeps ERM's weights as its MaskTune model."
        )
    effect = result["mask_effect"]
    # An ERM model near chance relies on nothing a mask could hide, so the drop says nothing about the cue.
    learnt = effect and effect["train_accuracy_original"] > 1 / erm.shape[1] + MASK_EFFECT_MIN_LEARNT
    if learnt and effect["train_accuracy_original"] - effect["train_accuracy_masked"] < MASK_EFFECT_MIN_DROP:
        accuracies = (
            f"its training accuracy is {effect['train_accuracy_original']:.1%} on original and "
            f"{effect['train_accuracy_masked']:.1%} on masked images"
        )
        if result["kept_source"]:
            consequence = (
                "A cue spread over the whole image (a colour cast, a texture) cannot be removed by masking "
                "a region."
            )
        else:  # a finetune was kept all the same: its gain is not the cue's removal
            consequence = (
                "The kept finetune's gain did not come from hiding the cue itself; the test split shows "
                "whether it holds."
            )
        notes.append(f"The masks hid little of what ERM relies on: {accuracies}. {consequence}")
    result["notes"] = notes
    return result


# Below this drop in ERM's training accuracy, the masks did not hide what ERM uses (see mask_effect).
MASK_EFFECT_MIN_DROP = 0.02
# ... and only once ERM's training accuracy is this far above chance.
MASK_EFFECT_MIN_LEARNT = 0.1


def candidate_metrics(ctx: Context) -> list[dict[str, Any]]:
    """Each finetune candidate's accuracy and worst-group accuracy on every eval split, and if it was kept."""
    out = []
    for iteration, entries in sorted(candidate_record(ctx.run).items()):
        for candidate in entries["candidates"]:
            model = ctx.load_model(candidate["name"])
            splits = {}
            for split_name in ctx.bundle.eval_splits:
                _, result = ctx.split_metrics(model, split_name)
                splits[split_name] = {
                    "accuracy": result["accuracy"],
                    "worst_group_accuracy": result["worst_group_accuracy"],
                    "worst_class_accuracy": min(c["accuracy"] for c in result["per_class"].values()),
                }
            out.append(
                {
                    "name": candidate["name"],
                    "iteration": int(iteration),
                    "settings": candidate["settings"],
                    "val_score": candidate["val_score"],
                    "selected": entries.get("selected") == candidate["name"],
                    "splits": splits,
                }
            )
    return out
