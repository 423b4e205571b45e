"""docs/suite.md from a run store: ERM against MaskTune on every suite dataset, seeds grouped by role.

Runs are found by config (``runner.expected_config``), so the page shows runs of the product's current
defaults and nothing older. Seeds carry a role: "tuning" seeds may have been looked at to choose settings,
"held-out" seeds were not; the summary reads the held-out seeds when there are any.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.suite.generate import read_card
from bench.suite.results import MODELS, RunResult, mean_std, read_result
from bench.suite.runner import VARIANTS, Job, expected_config, find_run
from masktune_core.runs import RunStore

ROLES = ("held-out", "tuning")
MODEL_LABELS = {"erm": "ERM", "masktune": "MaskTune"}
CLEAR_GAIN = 0.05  # the acceptance bar: MaskTune's mean worst-group test accuracy >= ERM's + 5 points
WG, ACC = "worst_group_accuracy", "accuracy"


@dataclass
class Suite:
    """Every (dataset, variant, seed) asked for, with its result or None when not run."""

    cards: dict[str, dict[str, Any]]  # dataset folder name -> card.json
    roles: dict[str, list[int]]  # role -> seeds
    variants: list[str]
    results: dict[tuple[str, str, int], RunResult | None]


def collect(
    data_folders: list[Path], runs_dir: Path, roles: dict[str, list[int]], variants: list[str]
) -> Suite:
    runs = RunStore(runs_dir).list()
    cards, results = {}, {}
    for folder in data_folders:
        card = read_card(folder)
        cards[folder.name] = card
        for variant in variants:
            for seeds in roles.values():
                for seed in seeds:
                    run = find_run(runs, expected_config(Job(folder, card["dataset"], variant, seed)))
                    results[(folder.name, variant, seed)] = None if run is None else read_result(run)
    return Suite(cards, roles, variants, results)


# ------------------------------------------------------------------------------------------ formatting
def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def spread(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` in percent (sample std), or the one value marked as one seed."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    shown = points(mean) if signed else pct(mean)
    return f"{shown} (one seed)" if std is None else f"{shown} ± {100 * std:.1f}"


def verdict_text(verdict: dict[str, Any] | None) -> str:
    """The run's own verdict, numbers as stored in metrics.json."""
    if not verdict:
        return "–"
    text = str(verdict.get("label", "?"))
    where = " on ".join(str(verdict[key]) for key in ("metric", "split") if verdict.get(key))
    extra = []
    if all(isinstance(verdict.get(model), (int, float)) for model in MODELS):
        extra.append(f"ERM {verdict['erm']:.3f}, MaskTune {verdict['masktune']:.3f}")
    if isinstance(verdict.get("difference"), (int, float)):
        extra.append(f"difference {verdict['difference']:+.3f}")
    interval = verdict.get("interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        extra.append(f"interval [{interval[0]:+.3f}, {interval[1]:+.3f}]")
    if where:
        extra.insert(0, where)
    return f"{text} ({', '.join(extra)})" if extra else text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


# ------------------------------------------------------------------------------------------ sections
def _done(suite: Suite, name: str, variant: str, seeds: list[int]) -> list[tuple[int, RunResult]]:
    pairs = [(seed, suite.results.get((name, variant, seed))) for seed in seeds]
    return [(seed, result) for seed, result in pairs if result is not None]


def _values(done: list[tuple[int, RunResult]], split: str, model: str, measure: str) -> list[float]:
    found = [result.score(split, model, measure) for _, result in done]
    return [value for value in found if value is not None]


def _paired(done: list[tuple[int, RunResult]], split: str, measure: str) -> list[float]:
    """MaskTune - ERM per seed, for seeds that have both."""
    pairs = [(r.score(split, "masktune", measure), r.score(split, "erm", measure)) for _, r in done]
    return [masktune - erm for masktune, erm in pairs if masktune is not None and erm is not None]


def summary(suite: Suite, variant: str) -> list[str]:
    role = next((role for role in ROLES if suite.roles.get(role)), None)
    if role is None:
        return []
    seeds = suite.roles[role]
    rows, clear, held = [], 0, 0
    for name, card in suite.cards.items():
        done = _done(suite, name, variant, seeds)
        erm, masktune = _values(done, "test", "erm", WG), _values(done, "test", "masktune", WG)
        diffs = _paired(done, "test", WG)
        if erm and masktune:
            gain = mean_std(masktune)[0] - mean_std(erm)[0]
            held += gain >= 0
            clear += gain >= CLEAR_GAIN
        won = sum(diff > 0 for diff in diffs)
        rows.append(
            [
                name,
                card["spec"]["cue"],
                f"{len(done)} of {len(seeds)}",
                spread(erm),
                spread(masktune),
                spread(diffs, signed=True),
                f"{won} of {len(diffs)}",
            ]
        )
    header = [
        "dataset",
        "cue",
        "seeds run",
        "ERM",
        "MaskTune",
        "MaskTune − ERM (paired)",
        "seeds MaskTune won",
    ]
    return [
        f"## Summary: worst-group test accuracy (%), variant `{variant}`, {role} seeds "
        f"{', '.join(map(str, seeds))}",
        "",
        *_table(header, rows),
        "",
        f"MaskTune's mean is at least ERM's on {held} of {len(suite.cards)} datasets, and at least "
        f"{100 * CLEAR_GAIN:.0f} points above it on {clear}.",
        "",
        *finetune_cost(suite, variant),
    ]


def finetune_cost(suite: Suite, variant: str) -> list[str]:
    """What the finetune candidates cost next to ERM: wall time of the finetune stage over the ERM stage."""
    ratios = sorted(
        result.stage_seconds["finetune_1"] / result.stage_seconds["erm"]
        for (_, run_variant, _), result in suite.results.items()
        if run_variant == variant
        and result is not None
        and result.stage_seconds.get("erm")
        and "finetune_1" in result.stage_seconds
    )
    if not ratios:
        return []
    median = statistics.median(ratios)
    return [
        f"Cost of the finetune candidates (every run of the variant, all seeds): the finetune stage took a "
        f"median {median:.2f}× the wall time of the ERM stage (range {ratios[0]:.2f}–{ratios[-1]:.2f}×, "
        f"{len(ratios)} runs).",
        "",
    ]


def datasets_table(suite: Suite) -> list[str]:
    rows = []
    for name, card in suite.cards.items():
        spec = card["spec"]
        sizes = spec["sizes"]
        rows.append(
            [
                name,
                f"`{card['dataset']}`",
                f"{card['label_0']} vs {card['label_1']} ({spec['difficulty']})",
                f"{spec['cue']}: 0 = {card['cue_0']}; 1 = {card['cue_1']}",
                f"{100 * card['train_correlation']:.0f}%",
                f"{sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,}",
            ]
        )
    header = ["dataset", "--dataset", "task (difficulty)", "cue", "train correlation", "train / val / test"]
    return ["## Datasets", "", *_table(header, rows), ""]


def _aggregate(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in suite.variants:
        done = _done(suite, name, variant, seeds)
        for model in MODELS:
            cells = [
                spread(_values(done, split, model, measure))
                for split in ("test", "val")
                for measure in (WG, ACC)
            ]
            rows.append([f"`{variant}`", MODEL_LABELS[model], *cells])
        rows.append(
            [
                f"`{variant}`",
                "MaskTune − ERM",
                *(
                    spread(_paired(done, split, measure), signed=True)
                    for split in ("test", "val")
                    for measure in (WG, ACC)
                ),
            ]
        )
    header = ["variant", "model", "test worst-group", "test average", "val worst-group", "val average"]
    return _table(header, rows)


def _per_seed(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in suite.variants:
        for seed in seeds:
            result = suite.results.get((name, variant, seed))
            if result is None:
                rows.append([f"`{variant}`", str(seed), *["–"] * 6, "not run", "–", "–"])
                continue
            cells = []
            for split in ("test", "val"):
                erm, masktune = result.score(split, "erm", WG), result.score(split, "masktune", WG)
                difference = None if erm is None or masktune is None else masktune - erm
                cells += [pct(erm), pct(masktune), points(difference)]
            seconds = "–" if result.seconds is None else f"{result.seconds:.0f} s"
            rows.append(
                [f"`{variant}`", str(seed), *cells, verdict_text(result.verdict), seconds, result.run_id]
            )
    header = ["variant", "seed", "ERM test", "MaskTune test", "Δ test", "ERM val", "MaskTune val", "Δ val"]
    return _table([*header, "verdict (from the run)", "run time", "run"], rows)


def _plateau(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in suite.variants:
        for seed, result in _done(suite, name, variant, seeds):
            plateau = result.plateau
            if plateau is None:
                continue
            rows.append(
                [
                    f"`{variant}`",
                    str(seed),
                    str(plateau.epochs),
                    f"{plateau.best_loss:.3f} (epoch {plateau.best_epoch})",
                    f"{plateau.last_loss:.3f}",
                    f"{plateau.ratio:.2f}",
                    str(plateau.epochs - plateau.best_epoch),
                ]
            )
    if not rows:
        return []
    header = ["variant", "seed", "ERM epochs", "lowest val loss", "last val loss", "last / lowest"]
    header.append("epochs after the lowest")
    return [
        "ERM's val loss (mean cross-entropy on val) against its plateau; 0 epochs after the lowest means it "
        "was still falling when training stopped:",
        "",
        *_table(header, rows),
        "",
    ]


def _candidates(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in suite.variants:
        for seed, result in _done(suite, name, variant, seeds):
            for candidate in result.candidates:
                splits = candidate.get("splits") or {}
                cells = [
                    pct((splits.get(split) or {}).get(measure))
                    for split in ("val", "test")
                    for measure in (WG, ACC)
                ]
                settings = candidate.get("settings")
                settings_text = (
                    ", ".join(f"{k}={v}" for k, v in settings.items())
                    if isinstance(settings, dict)
                    else str(settings or "")
                )
                selected = "**yes**" if candidate.get("selected") else ""
                rows.append(
                    [
                        f"`{variant}`",
                        str(seed),
                        str(candidate.get("name", "?")),
                        settings_text,
                        selected,
                        *cells,
                    ]
                )
    if not rows:
        return []
    header = ["variant", "seed", "candidate", "settings", "selected", "val worst-group", "val average"]
    return [
        "Finetune candidates each run kept (%):",
        "",
        *_table([*header, "test worst-group", "test average"], rows),
        "",
    ]


def dataset_section(suite: Suite, name: str) -> list[str]:
    card = suite.cards[name]
    lines = [
        f"## {name}",
        "",
        f"{card['label_0']} vs {card['label_1']}; cue: {card['cue_0']} / {card['cue_1']}.",
        "",
    ]
    for role in ROLES:
        seeds = suite.roles.get(role)
        if not seeds:
            continue
        lines += [f"### {role.capitalize()} seeds {', '.join(map(str, seeds))}", ""]
        lines += ["Mean ± sample std over seeds (%):", "", *_aggregate(suite, name, seeds), ""]
        lines += [
            "Worst-group accuracy per seed (%; Δ = MaskTune − ERM, in points):",
            "",
            *_per_seed(suite, name, seeds),
            "",
        ]
        lines += _candidates(suite, name, seeds)
        lines += _plateau(suite, name, seeds)
    return lines


def render(suite: Suite, command: str) -> str:
    variants = ", ".join(f"`{v}` ({' '.join(VARIANTS[v]) or 'the product defaults'})" for v in suite.variants)
    lines = [
        "# Spurious-correlation suite",
        "",
        f"Regenerate: `{command}`.",
        "",
        "Every run is `python -m masktune_core run --dataset FORMAT --data-dir DIR --backbone small-cnn "
        f"--image-size 32 --seed S` plus the variant's flags. Variants: {variants}.",
        "",
        "Definitions. Worst-group accuracy: the lowest accuracy over the four (label, cue) groups of a "
        "split. Average accuracy: plain accuracy over the split; val and test hold the four groups in equal "
        "numbers, so it is also the mean of the group accuracies. ± is the sample standard deviation "
        "(n − 1) over seeds; a single seed says so. MaskTune − ERM is paired: the difference within each "
        "seed, then its mean ± std. Held-out seeds played no part in choosing settings; tuning seeds may "
        "have. Run time: the wall-clock seconds of the run's stages (data, ERM, masks, finetune, "
        "evaluation), each run single-threaded; runs side by side or on a busy machine take longer.",
        "",
        *datasets_table(suite),
    ]
    for variant in suite.variants:
        lines += summary(suite, variant)
    for name in suite.cards:
        lines += dataset_section(suite, name)
    return "\n".join(lines).rstrip() + "\n"
