"""Gather everything the report says about one run or one seed study into a JSON-ready dict.

Nothing here trains or re-evaluates: numbers come from the run directories (metrics.json, predictions,
events, saved threshold sets). The gallery alone runs the models, on the few images it shows.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from masktune_core import selective, studies
from masktune_core.config import RunConfig
from masktune_core.errors import ConfigError
from masktune_core.report import gallery
from masktune_core.runs import Run, now_iso, read_json

HEADLINE_METRICS = ("accuracy", "worst_group_accuracy")
TARGETS = (0.95, 0.9, 0.8)
PACKAGES = ("torch", "torchvision", "numpy", "grad-cam", "scikit-learn")
RULE = "agreement"
MASKTUNE_KEYS = (
    "iterations",
    "cam_method",
    "threshold_rule",
    "topk_percent",
    "mask_dilation",
    "finetune_lrs",
    "finetune_fills",
    "finetune_epochs",
    "finetune_checks",
    "finetune_start",
    "finetune_selection",
)
# What each pipeline stage produces, to say what an unfinished run is missing.
STAGE_PRODUCTS = {
    "erm": "the ERM model",
    "masks_1": "the masks",
    "finetune_1": "the MaskTune model",
    "evaluate": "the test numbers (metrics.json and predictions)",
}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def reproduce_command(config: dict[str, Any], seeds: Sequence[int]) -> str:
    """The ``run`` command that makes this run (or study) again: every option that differs from the "
    "default."""
    defaults = RunConfig().to_dict()
    parts = ["python -m masktune_core run"]
    for f in dataclasses.fields(RunConfig):
        value = config.get(f.name)
        if f.name in ("name", "study", "seed") or value is None or value == defaults.get(f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {value}")
    parts.append(f"--seeds {','.join(str(s) for s in seeds)}" if len(seeds) > 1 else f"--seed {seeds[0]}")
    return " ".join(parts)


# ---------------------------------------------------------------------- sections
def setup_section(runs: Sequence[Run]) -> dict[str, Any]:
    config = runs[0].config()
    seeds = [run.config().get("seed") for run in runs]
    status = runs[0].status()
    return {
        "dataset": config.get("dataset"),
        "backbone": config.get("backbone"),
        "erm": {k: config.get(k) for k in ("epochs", "batch_size", "optimizer", "lr", "selection")},
        "masktune": {k: config.get(k) for k in MASKTUNE_KEYS},
        "seeds": seeds,
        "runs": [run.id for run in runs],
        "date": status.get("finished") or status.get("started") or status.get("created"),
        "versions": versions(),
        "command": reproduce_command(config, seeds),
    }


def headline_section(summary: dict[str, Any]) -> dict[str, Any] | None:
    split = summary.get("main_test_split")
    if not split or split not in summary["splits"]:
        return None
    values = summary["splits"][split]
    return {"split": split, "metrics": {m: values[m] for m in HEADLINE_METRICS if m in values}}


def verdict_section(runs: Sequence[Run], summary: dict[str, Any]) -> dict[str, Any]:
    """A study's verdict uses the spread over seeds; a single run shows the one its metrics.json records."""
    if len(runs) > 1:
        verdict = studies.study_verdict(summary)
        return {"verdict": verdict, "source": "seeds" if verdict else None, "candidates": None}
    metrics = runs[0].metrics() or {}
    verdict = metrics.get("verdict")
    return {
        "verdict": verdict,
        "source": "metrics.json" if verdict else None,
        "candidates": metrics.get("candidates"),
    }


def _mean_tables(all_metrics: list[dict[str, Any]], split: str, key: str) -> dict[str, Any] | None:
    """Per group (``key`` = per_group) or per class, the mean accuracy over runs of each model."""
    models = [m for m in studies.MODELS if all(m in x["splits"].get(split, {}) for x in all_metrics)]
    if not models:
        return None
    names = list(all_metrics[0]["splits"][split][models[0]].get(key) or {})
    if not names:
        return None
    rows = []
    for name in names:
        row: dict[str, Any] = {
            "name": name,
            "n": all_metrics[0]["splits"][split][models[0]][key][name].get("n"),
        }
        for model in models:
            values = [x["splits"][split][model][key].get(name, {}).get("accuracy") for x in all_metrics]
            values = [v for v in values if v is not None]
            row[model] = float(np.mean(values)) if values else None
        rows.append(row)
    worst = {}  # every group (or class) at the model's minimum: a tie is shown as a tie
    for model in models:
        present = [r[model] for r in rows if r[model] is not None]
        if present:
            worst[model] = [r["name"] for r in rows if r[model] == min(present)]
    return {"models": models, "rows": rows, "worst": worst}


def tables_section(runs: Sequence[Run]) -> dict[str, Any] | None:
    all_metrics = [run.metrics() for run in runs if run.metrics()]
    if not all_metrics:
        return None
    out = {}
    splits = list(all_metrics[0].get("splits", {}))
    main = all_metrics[0].get("main_test_split")
    # The main test split first, validation last, as on the Results page.
    for split in sorted(splits, key=lambda s: (s != main, s == "val")):
        if all(split in m.get("splits", {}) for m in all_metrics):
            out[split] = {
                "groups": _mean_tables(all_metrics, split, "per_group"),
                "classes": _mean_tables(all_metrics, split, "per_class"),
            }
    return out


def gallery_section(run: Run) -> dict[str, Any] | None:
    """At least 12 chosen examples of the main test split and the training masks, with their images."""
    metrics = run.metrics() or {}
    split = metrics.get("main_test_split")
    pred = run.predictions(split) if split else None
    masks_file = run.masks_path("iter1")
    if pred is None or "probs_masktune" not in pred or not masks_file.is_file():
        return None
    import torch

    from masktune_core.data.cache import load_dataset
    from masktune_core.masking import load_packed_masks
    from masktune_core.models import load_run_models

    config = run.config()
    summary = read_json(run.file("dataset.json")) or {}
    models = load_run_models(run.path, ("erm", "masktune"))
    if set(models) != {"erm", "masktune"}:
        return None
    # From the dataset cache, bit-packed masks: only the gallery's rows are read and unpacked.
    bundle = load_dataset(config["dataset"], RunConfig.from_dict(config).data_options())
    train = bundle.splits["train"]
    masks = load_packed_masks(masks_file)
    train_groups = None if train.groups is None else train.groups.numpy()
    names = bundle.group_names or bundle.class_names
    chosen = gallery.choose_test_examples(pred)
    training = gallery.choose_training_examples(
        train.labels.numpy(), train_groups, int(config.get("seed", 0))
    )
    chosen = gallery.fill_up(pred, chosen, gallery.MIN_EXAMPLES - len(training))
    examples: list[dict[str, Any]] = []
    heat = ("erm", "masktune")
    for split_name, picks, stored in (
        (split, chosen, None),
        ("train", [("training", i) for i in training], masks),
    ):
        if not picks:
            continue
        index = torch.tensor([i for _, i in picks], dtype=torch.long)
        data = bundle.splits[split_name]
        views = gallery.sample_views(
            models,
            data.images[index],
            config,
            summary["mean"],
            None if stored is None else stored[index],
            heat,
        )
        if split_name == split:
            probs = {m: pred[f"probs_{m}"][index.numpy()] for m in heat}
        else:
            with torch.no_grad():
                x = data.images[index].float() / 255
                probs = {m: torch.softmax(models[m](x), 1).numpy() for m in heat}
        for row, (category, i) in enumerate(picks):
            label = int(data.labels[i])
            group = None if data.groups is None else int(data.groups[i])
            examples.append(
                {
                    "category": category,
                    "split": split_name,
                    "index": i,
                    "label": bundle.class_names[label],
                    "group": None if group is None or not bundle.group_names else bundle.group_names[group],
                    **{f"{m}_prediction": bundle.class_names[int(probs[m][row].argmax())] for m in heat},
                    **{f"{m}_confidence": float(probs[m][row].max()) for m in heat},
                    "masked_area": float(views["masks"][row].mean()),
                    "image": gallery.data_uri(gallery.strip_png(views, row, True)),
                }
            )
    return {
        "split": split,
        "examples": examples,
        "mask_area": gallery.mask_area_by_group(masks, train_groups, names),
        "categories": gallery.CATEGORIES,
    }


def _curve_dict(ranking: selective.Ranking) -> dict[str, Any]:
    """The ranking's risk-coverage curve, thinned, and its full-range AURC [0, 1] (None when undefined)."""
    curve = selective.risk_coverage(ranking)
    step = max(1, len(curve.coverage) // 200)  # 200 points draw the curve; the file stays small
    keep = list(range(0, len(curve.coverage), step))
    if keep and keep[-1] != len(curve.coverage) - 1:
        keep.append(len(curve.coverage) - 1)
    return {
        "coverage": [float(curve.coverage[i]) for i in keep],
        "risk": [float(curve.risk[i]) for i in keep],
        "accuracy": [float(curve.accuracy[i]) for i in keep],
        "aurc": selective.summarize(ranking).aurc,
    }


def selective_section(run: Run) -> dict[str, Any] | None:
    """Curves on val and test for the agreement rule; saved sets or target-coverage fits as points."""
    metrics = run.metrics() or {}
    test = metrics.get("main_test_split")
    val_pred, test_pred = run.predictions("val"), run.predictions(test) if test else None
    if val_pred is None or test_pred is None or "probs_masktune" not in test_pred:
        return None

    def scored(pred: dict[str, np.ndarray], rule: str) -> selective.Scored:
        return selective.score(
            rule, pred["probs_erm"], pred["probs_masktune"], pred["label"], pred.get("group")
        )

    num_classes = int(test_pred["probs_erm"].shape[1])
    points = []
    saved = run.threshold_sets()
    for name, value in saved.items():
        try:
            tset = selective.ThresholdSet.from_json(json.dumps(value), num_classes)
        except ConfigError:
            continue  # counted in skipped_sets, and the page says so
        # Only a set of the charted rule with one global threshold lies on the charted curve.
        t = tset.thresholds
        on_curve = tset.rule == RULE and all(c is None for c in t.per_class) and set(t.weights) == {1.0}
        for split, pred in (("val", val_pred), (test, test_pred)):
            result = selective.evaluate(scored(pred, tset.rule), tset.thresholds)
            points.append(_point(name, tset.rule, split, result) | {"on_curve": on_curve})
    source = "saved"
    if not points:
        source = "targets"
        val_s, test_s = scored(val_pred, RULE), scored(test_pred, RULE)
        ranking = selective.rank(val_s)
        for target in TARGETS:
            fit = selective.fit_global_threshold(ranking, target)
            thresholds = selective.Thresholds.build(num_classes, fit.threshold)
            for split, s in (("val", val_s), (test, test_s)):
                point = _point(
                    f"{round(100 * target)} % target", RULE, split, selective.evaluate(s, thresholds)
                )
                point.update(threshold=fit.threshold, reachable=fit.reachable, on_curve=True)
                points.append(point)
    curves = {
        split: _curve_dict(selective.rank(scored(pred, RULE)))
        for split, pred in (("val", val_pred), (test, test_pred))
    }
    return {
        "rule": RULE,
        "rule_definition": selective.RULES[RULE].definition,
        "test_split": test,
        "curves": curves,
        "points": points,
        "source": source,
        "skipped_sets": len(saved) - len({p["name"] for p in points}) if source == "saved" else len(saved),
    }


def _point(name: str, rule: str, split: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "rule": rule,
        "split": split,
        "coverage": result["coverage"],
        "accuracy_on_accepted": result["accuracy_on_accepted"],
        "agreement_rate": result["agreement_rate"],
    }


def training_section(run: Run) -> dict[str, Any] | None:
    events = run.events()
    if not events:
        return None
    loss: dict[str, list[list[float]]] = {}
    val: dict[str, list[list[float]]] = {}
    erm_epochs = max(
        [e["epoch"] for e in events if e.get("kind") == "epoch" and e.get("stage") == "erm"] or [0]
    )
    for event in events:
        stage = event.get("stage") or ""
        shift = 0.0 if stage == "erm" else float(erm_epochs)
        if event.get("kind") == "step" and event.get("loss") is not None:
            loss.setdefault(stage, []).append([shift + float(event["epoch"]), float(event["loss"])])
        if event.get("kind") == "epoch" and event.get("val_accuracy") is not None:
            val.setdefault(stage, []).append([shift + float(event["epoch"]), float(event["val_accuracy"])])
    seconds: dict[str, float] = {}
    for event in events:
        if event.get("kind") == "timing":
            seconds[event["stage"]] = seconds.get(event["stage"], 0.0) + float(event["seconds"])
    masks = [e for e in events if e.get("kind") == "masks"]
    return {
        "loss": _thin(loss),
        "val_accuracy": val,
        "erm_epochs": erm_epochs,
        "seconds": seconds,
        "mask_area": [{"stage": e["stage"], "mean_area": e.get("mean_area")} for e in masks],
    }


def _thin(curves: dict[str, list[list[float]]], keep: int = 150) -> dict[str, list[list[float]]]:
    return {stage: points[:: max(1, len(points) // keep)] for stage, points in curves.items()}


def limits_section(runs: Sequence[Run], summary: dict[str, Any]) -> list[str]:
    notes = []
    for run in runs:
        status = run.status()
        state = status.get("state")
        if state != "done":
            done = set(status.get("stages_done") or [])
            missing = [what for stage, what in STAGE_PRODUCTS.items() if stage not in done]
            notes.append(
                f"Run {run.id} is {state}, not finished"
                + (f" (stopped in stage '{status['stage']}')" if status.get("stage") else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + ". The sections that need them say so instead of showing numbers."
            )
        skipped = status.get("skipped_files") or (read_json(run.file("dataset.json")) or {}).get(
            "skipped_files"
        )
        if skipped:
            shown = ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
            notes.append(
                f"Run {run.id} skipped {len(skipped)} unreadable image(s) while loading the data: {shown}."
            )
    if summary["n_seeds"] <= 1:
        notes.append(
            "One seed only: every number comes from a single training run, and a second seed can move them "
            "by "
            "several points. A seed study (run --seeds 0,1,2) gives their spread."
        )
    if len(runs) > 1:
        notes.append(
            "The gallery, selective classification and training sections show seed "
            f"{runs[0].config().get('seed')} "
            f"(run {runs[0].id}); the headline and the tables summarise all {summary['n_seeds']} seeds."
        )
    return notes


# ---------------------------------------------------------------------- the whole report
def collect(runs: Sequence[Run], study: str | None = None) -> dict[str, Any]:
    """The report's content for ``runs`` (one run, or the runs of one seed study)."""
    summary = studies.summarize(runs, study)
    first = next((run for run in runs if run.id in summary["runs"]), runs[0])
    config = runs[0].config()
    title = study or summary.get("study") or config.get("name") or runs[0].id
    return {
        "title": str(title),
        "kind": "study" if len(runs) > 1 else "run",
        "generated": now_iso(),
        "setup": setup_section(runs),
        "summary": summary,
        "headline": headline_section(summary),
        "verdict": verdict_section(runs, summary),
        "tables": tables_section(runs),
        "gallery": gallery_section(first),
        "selective": selective_section(first),
        "training": training_section(first),
        "limits": limits_section(runs, summary),
    }
