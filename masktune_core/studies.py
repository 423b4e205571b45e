"""Seed studies: runs of one configuration that differ only in their seed.

A study is the set of runs whose ``config.json`` carries the same ``study`` id (``run --seeds 0,1,2``).
Its summary gives, per split, metric and model:

- every seed's value (one point per seed);
- the mean, and the *sample* standard deviation over seeds (ddof = 1; undefined for one seed);
- the paired difference MaskTune − ERM per seed, with a 95 % Student-t interval over seeds:
  mean ± t(0.975, n − 1) · s / √n. Pairing is sound because each seed's MaskTune model is finetuned
  from that seed's ERM model on that seed's data, so the difference removes the spread both share.

The t-interval (rather than a bootstrap over seeds) because a bootstrap over 3 to 5 seeds can only
resample a handful of distinct means and is too narrow; the t-interval widens honestly when n is small.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from masktune_core.config import RunConfig
from masktune_core.errors import ConfigError, RunStoreError
from masktune_core.runs import Run, RunStore, check_name, slugify

METRICS = ("accuracy", "worst_group_accuracy", "worst_class_accuracy")
MODELS = ("erm", "masktune")
CONFIDENCE = 0.95
# Config keys that may differ between the runs of one study.
PER_SEED_KEYS = ("seed", "name", "study")
MAX_SEEDS = 20
DEFINITIONS = {
    "std": "sample standard deviation over seeds (ddof = 1)",
    "difference": "MaskTune − ERM on the same seed, then averaged over seeds",
    "interval": "95 % Student-t interval over seeds of the paired difference: mean ± t(0.975, n−1)·s/√n",
    "worst_class_accuracy": "minimum over classes of the per-class accuracy (used where a split has no "
    "groups)",
}


# ---------------------------------------------------------------------- creating a study
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ConfigError naming ``seeds`` for anything else."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            "seeds", f"must be whole numbers separated by commas, e.g. 0,1,2; got {text!r}"
        ) from None
    if not seeds:
        raise ConfigError("seeds", "give at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"each seed once, please; got {text!r}")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError("seeds", f"at most {MAX_SEEDS} seeds in one study, got {len(seeds)}")
    return seeds


def new_study_id(config: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"study-{stamp}-{slugify(config.name or config.dataset)}"


def seed_configs(config: RunConfig, seeds: Sequence[int], study: str | None = None) -> list[RunConfig]:
    """One validated config per seed, sharing everything else and one study id."""
    study = study or new_study_id(config)
    base = config.name or config.dataset
    configs = []
    for seed in seeds:
        name = f"{base[:70]} · seed {seed}"
        one = dataclasses.replace(config, seed=int(seed), study=study, name=name)
        one.validate()
        configs.append(one)
    return configs


# ---------------------------------------------------------------------- finding a study
def study_of(run: Run) -> str | None:
    return run.config().get("study")


def study_runs(store: RunStore, study: str) -> list[Run]:
    check_name(study, "run or study id")
    runs = [run for run in store.list() if study_of(run) == study]
    if not runs:
        raise RunStoreError(f"no run or study {study!r} in {store.root}")
    return by_seed(runs)


def resolve(store: RunStore, ids: Sequence[str]) -> list[Run]:
    """The runs named by ``ids``, each a run id or a study id, in order and without repeats."""
    runs: dict[str, Run] = {}
    for name in ids:
        try:
            found = [store.get(name)]
        except RunStoreError:
            found = study_runs(store, name)
        runs.update((run.id, run) for run in found)
    return list(runs.values())


def by_seed(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda run: (run.config().get("seed") or 0, run.id))


def check_one_setup(runs: Sequence[Run]) -> None:
    """Refuse runs that are not one configuration over seeds: the dataset first, then any other option."""
    if len(runs) < 2:
        return
    configs = [run.config() for run in runs]
    datasets = sorted({str(c.get("dataset")) for c in configs})
    if len(datasets) > 1:
        raise ConfigError(
            "dataset", f"a seed study needs one dataset, but these runs use {', '.join(datasets)}"
        )
    keys = sorted({k for c in configs for k in c} - set(PER_SEED_KEYS))
    for key in keys:
        values = {repr(c.get(key)) for c in configs}
        if len(values) > 1:
            raise ConfigError(key, f"a seed study needs one configuration, but the runs differ in {key}")
    seeds = [c.get("seed") for c in configs]
    if len(set(seeds)) < len(seeds):
        raise ConfigError("seed", "a seed study needs a different seed per run, but some runs share one")


# ---------------------------------------------------------------------- statistics
def worst_class_accuracy(model_metrics: dict[str, Any]) -> float | None:
    values = [c.get("accuracy") for c in (model_metrics.get("per_class") or {}).values()]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def metric_value(model_metrics: dict[str, Any], metric: str) -> float | None:
    if metric == "worst_class_accuracy":
        return worst_class_accuracy(model_metrics)
    return model_metrics.get(metric)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof = 1) and the 95 % t-interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    out: dict[str, Any] = {"values": x.tolist(), "n": n, "mean": float(x.mean()) if n else None}
    if n < 2:
        out.update(std=None, interval=None)
        return out
    from scipy.stats import t

    std = float(x.std(ddof=1))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    out.update(std=std, interval=[out["mean"] - half, out["mean"] + half])
    return out


def summarize(runs: Sequence[Run], study: str | None = None) -> dict[str, Any]:
    """The study's summary (JSON-ready). Only finished runs count; the others are listed as missing."""
    if not runs:
        raise RunStoreError("a study needs at least one run")
    check_one_setup(runs)
    finished = [run for run in runs if run.status().get("state") == "done" and run.metrics()]
    config = runs[0].config()
    out: dict[str, Any] = {
        "study": study or study_of(runs[0]),
        "dataset": config.get("dataset"),
        "backbone": config.get("backbone"),
        "runs": [run.id for run in finished],
        "seeds": [run.config().get("seed") for run in finished],
        "missing": [run.id for run in runs if run not in finished],
        "n_seeds": len(finished),
        "confidence": CONFIDENCE,
        "definitions": DEFINITIONS,
        "splits": {},
    }
    if not finished:
        out["main_test_split"] = None
        return out
    metrics = [run.metrics() for run in finished]
    out["main_test_split"] = metrics[0].get("main_test_split")
    splits = [s for s in metrics[0].get("splits", {}) if all(s in m.get("splits", {}) for m in metrics)]
    for split in splits:
        by_metric: dict[str, Any] = {}
        for metric in METRICS:
            per_model = {}
            for model in MODELS:
                values = [metric_value(m["splits"][split].get(model, {}), metric) for m in metrics]
                if all(v is not None for v in values):
                    per_model[model] = spread(values)
            if len(per_model) == len(MODELS):
                diffs = np.subtract(per_model["masktune"]["values"], per_model["erm"]["values"])
                per_model["difference"] = spread(diffs.tolist())
            if per_model:
                by_metric[metric] = per_model
        out["splits"][split] = by_metric
    return out


def verdict_metric(summary: dict[str, Any]) -> str:
    val = summary["splits"].get("val", {})
    return (
        "worst_group_accuracy"
        if "difference" in val.get("worst_group_accuracy", {})
        else "worst_class_accuracy"
    )


def study_verdict(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict judged on val over seeds, shaped like a run's ``verdict``; None below two seeds."""
    metric = verdict_metric(summary)
    values = summary["splits"].get("val", {}).get(metric, {})
    diff = values.get("difference")
    if diff is None or diff["interval"] is None:
        return None
    lo, hi = diff["interval"]
    label = "helped" if lo > 0 else "hurt" if hi < 0 else "no clear difference"
    name = metric.replace("_", "-").replace("-accuracy", " accuracy")
    text = (
        f"Over {diff['n']} seeds, MaskTune changed val {name} by {100 * diff['mean']:+.1f} points "
        f"(95 % t-interval over seeds {100 * lo:+.1f} to {100 * hi:+.1f})"
    )
    if label == "helped":
        text += ": MaskTune helped."
    elif label == "hurt":
        text += ": MaskTune hurt; use the ERM model."
    else:
        text += ": no clear difference at this number of seeds."
    return {
        "label": label,
        "metric": metric,
        "split": "val",
        "erm": values["erm"]["mean"],
        "masktune": values["masktune"]["mean"],
        "difference": diff["mean"],
        "interval": [lo, hi],
        "confidence": CONFIDENCE,
        "seeds": diff["n"],
        "method": "t-interval over seeds",
        "recommendation": "erm" if label == "hurt" else "masktune",
        "text": text,
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as text, for ``show STUDY_ID``."""
    n = summary["n_seeds"]
    lines = [
        f"study {summary['study']}: {summary['dataset']} / {summary['backbone']}, "
        f"{n} finished seed{'s' if n != 1 else ''} ({', '.join(str(s) for s in summary['seeds'])})"
    ]
    if summary["missing"]:
        lines.append(f"not finished (left out): {', '.join(summary['missing'])}")
    if n == 1:
        lines.append("one seed only: no spread over seeds can be given")
    for split, by_metric in summary["splits"].items():
        for metric, values in by_metric.items():
            parts = [f"{model} {_mean_std(values[model])}" for model in MODELS if model in values]
            diff = values.get("difference")
            if diff is not None:
                interval = diff["interval"]
                ci = "" if interval is None else f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
                parts.append(f"MaskTune − ERM {100 * diff['mean']:+.1f} pp{ci}")
            seeds = " ".join(f"{100 * v:.1f}" for v in values.get("masktune", values.get("erm"))["values"])
            lines.append(f"{split:14} {metric:22} " + " | ".join(parts) + f"  (MaskTune per seed: {seeds})")
    verdict = study_verdict(summary)
    if verdict:
        lines.append("verdict (val): " + verdict["text"])
    lines.append("± is the " + DEFINITIONS["std"] + "; [..] is the " + DEFINITIONS["interval"] + ".")
    return lines


def _mean_std(values: dict[str, Any]) -> str:
    std = "" if values["std"] is None else f" ± {100 * values['std']:.1f}"
    return f"{100 * values['mean']:.1f}{std} %"
