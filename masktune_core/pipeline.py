"""The stages of a run: erm -> masks_1 -> finetune_1 [-> masks_2 -> finetune_2 ...] [-> randmask] -> evaluate.

Each stage reads what earlier stages left in the run directory and records itself in
``status.stages_done`` when its outputs are on disk, so a resumed run skips finished stages. ERM also
saves a training state (model, optimizer, scheduler, RNG) every epoch and resumes mid-stage from it.
The finetune and RandMask stages live in ``finetune``; what the stages share, in ``context``.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masktune_core import candidates, distributed, evaluate, masking, models, train
from masktune_core.config import RunConfig
from masktune_core.context import (
    Cancelled,
    Context,
    Progress,
    prefixed,
    validation_scores,
)
from masktune_core.data import DatasetBundle
from masktune_core.data.base import Split
from masktune_core.data.cache import load_dataset
from masktune_core.errors import CheckpointError, MaskTuneError
from masktune_core.finetune import stage_finetune, stage_randmask
from masktune_core.runs import (
    LAST_ERM_STATE,
    Run,
    atomic_path,
    disk_error,
    now_iso,
    process_start_time,
    write_json,
)

MODEL_NAMES = ("erm", "masktune", "randmask")


# ---------------------------------------------------------------------- stage plan and progress
def plan_stages(config: RunConfig) -> list[tuple[str, float]]:
    """Stage names with rough relative costs (one training epoch = 1), used for progress and ETA."""
    stages: list[tuple[str, float]] = [("erm", float(config.epochs))]
    for i in range(1, config.iterations + 1):
        settings = candidates.candidate_settings(config, i)
        stages += [(f"masks_{i}", 0.4), (f"finetune_{i}", float(sum(s.epochs for s in settings)))]
    if config.randmask:
        stages.append(("randmask", 1.0))
    stages.append(("evaluate", 0.3))
    return stages


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
                **prefixed("train", stats),
                **prefixed("val", val),
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
        if "last" in config.finetune_starts():  # a finetune starts from it, optimizer state included
            state_path.replace(ctx.run.checkpoint_path(LAST_ERM_STATE))
        else:
            state_path.unlink(missing_ok=True)


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
