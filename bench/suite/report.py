"""docs/suite.md from a run store: ERM against MaskTune on every suite dataset, seeds grouped by role; the
summary reads the held-out seeds when there are any."""

from __future__ import annotations

import statistics

from bench.suite.knobs import method_study
from bench.suite.results import MODELS, mean_std
from bench.suite.runner import VARIANTS
from bench.suite.tables import (
    ACC,
    CLEAR_GAIN,
    MODEL_LABELS,
    ROLES,
    WG,
    Suite,
    md_table,
    paired_diffs,
    pct,
    points,
    scores_of,
    seeds_done,
    shown_variants,
    spread,
    verdict_text,
)


def summary(suite: Suite, variant: str) -> list[str]:
    role = next((role for role in ROLES if suite.roles.get(role)), None)
    if role is None:
        return []
    seeds = suite.roles[role]
    rows, clear, held = [], 0, 0
    for name, card in suite.cards.items():
        done = seeds_done(suite, name, variant, seeds)
        erm, masktune = scores_of(done, "test", "erm", WG), scores_of(done, "test", "masktune", WG)
        diffs = paired_diffs(done, "test", WG)
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
        *md_table(header, rows),
        "",
        f"MaskTune's mean is at least ERM's on {held} of {len(suite.cards)} datasets, and at least "
        f"{100 * CLEAR_GAIN:.0f} points above it on {clear}.",
        "",
        *finetune_cost(suite, variant),
    ]


def method_seconds(stage_seconds: dict[str, float]) -> float:
    """Wall seconds of the masks and finetune stages of every round (RandMask, a control, left out)."""
    return sum(
        seconds for stage, seconds in stage_seconds.items() if stage.startswith(("masks_", "finetune_"))
    )


def finetune_cost(suite: Suite, variant: str) -> list[str]:
    """What the finetune candidates cost next to ERM: wall time of the finetune stage over the ERM stage.

    A run that started from another run's ERM checkpoint (same dataset and seed, so the same ERM) is
    measured against the ERM stage of the run that trained it."""
    erm_seconds = {
        (name, seed): result.stage_seconds["erm"]
        for (name, _, seed), result in suite.results.items()
        if result is not None and result.stage_seconds.get("erm")
    }
    ratios = sorted(
        method_seconds(result.stage_seconds) / erm_seconds[(name, seed)]
        for (name, run_variant, seed), result in suite.results.items()
        if run_variant == variant
        and result is not None
        and (name, seed) in erm_seconds
        and "finetune_1" in result.stage_seconds
    )
    if not ratios:
        return []
    median = statistics.median(ratios)
    return [
        f"Cost of the method (every run of the variant, all seeds): its masks and finetune stages, every "
        f"round, took a median {median:.2f}× the wall time of the ERM stage that trained the run's ERM "
        f"model (range {ratios[0]:.2f}–{ratios[-1]:.2f}×, {len(ratios)} runs).",
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
    return ["## Datasets", "", *md_table(header, rows), ""]


def _aggregate(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in shown_variants(suite, seeds, [name]):
        done = seeds_done(suite, name, variant, seeds)
        for model in MODELS:
            cells = [
                spread(scores_of(done, split, model, measure))
                for split in ("test", "val")
                for measure in (WG, ACC)
            ]
            rows.append([f"`{variant}`", MODEL_LABELS[model], *cells])
        rows.append(
            [
                f"`{variant}`",
                "MaskTune − ERM",
                *(
                    spread(paired_diffs(done, split, measure), signed=True)
                    for split in ("test", "val")
                    for measure in (WG, ACC)
                ),
            ]
        )
    header = ["variant", "model", "test worst-group", "test average", "val worst-group", "val average"]
    return md_table(header, rows)


def _per_seed(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in shown_variants(suite, seeds, [name]):
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
            if result.seconds is not None and "erm" not in result.stage_seconds:
                seconds += " (ERM reused)"
            rows.append(
                [f"`{variant}`", str(seed), *cells, verdict_text(result.verdict), seconds, result.run_id]
            )
    header = ["variant", "seed", "ERM test", "MaskTune test", "Δ test", "ERM val", "MaskTune val", "Δ val"]
    return md_table([*header, "verdict (from the run)", "run time", "run"], rows)


def _plateau(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in shown_variants(suite, seeds, [name]):
        for seed, result in seeds_done(suite, name, variant, seeds):
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
        *md_table(header, rows),
        "",
    ]


def _candidates(suite: Suite, name: str, seeds: list[int]) -> list[str]:
    rows = []
    for variant in shown_variants(suite, seeds, [name]):
        for seed, result in seeds_done(suite, name, variant, seeds):
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
        *md_table([*header, "test worst-group", "test average"], rows),
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
    # The summary is the first variant's (the defaults'); the method study compares them all.
    lines += summary(suite, suite.variants[0])
    lines += method_study(suite)
    for name in suite.cards:
        lines += dataset_section(suite, name)
    return "\n".join(lines).rstrip() + "\n"
