"""The method study on docs/suite.md: every variant against the defaults, one table per seed role.

A variant changes one option (``runner.VARIANTS``); each cell is MaskTune's worst-group test accuracy on
one dataset, with the paired MaskTune − ERM difference beside it, so variants read across and datasets down.
"""

from __future__ import annotations

from bench.suite.results import mean_std
from bench.suite.runner import VARIANTS
from bench.suite.tables import (
    CLEAR_GAIN,
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
)


def knob_cell(suite: Suite, name: str, variant: str, seeds: list[int]) -> tuple[str, float | None]:
    """ "MaskTune mean (paired Δ mean)" over the seeds run, and that Δ; "–" when none ran."""
    done = seeds_done(suite, name, variant, seeds)
    masktune, diffs = scores_of(done, "test", "masktune", WG), paired_diffs(done, "test", WG)
    if not masktune or not diffs:
        return "–", None
    gain = mean_std(diffs)[0]
    missing = "" if len(done) == len(seeds) else f", {len(done)} of {len(seeds)} seeds"
    return f"{pct(mean_std(masktune)[0])} ({points(gain)}{missing})", gain


def knob_table(suite: Suite, role: str) -> list[str]:
    seeds = suite.roles.get(role) or []
    names = list(suite.cards)
    rows = []
    for variant in shown_variants(suite, seeds):
        cells, gains = [], []
        for name in names:
            text, gain = knob_cell(suite, name, variant, seeds)
            cells.append(text)
            if gain is not None:
                gains.append(gain)
        flags = f"`{' '.join(VARIANTS[variant])}`" if VARIANTS[variant] else "the product defaults"
        held = sum(gain >= 0 for gain in gains)
        clear = sum(gain >= CLEAR_GAIN for gain in gains)
        rows.append([f"`{variant}`", flags, *cells, f"{held} / {clear} of {len(gains)}"])
    header = ["variant", "flags", *names, f"Δ ≥ 0 / Δ ≥ +{100 * CLEAR_GAIN:.0f}"]
    return [
        f"### {role.capitalize()} seeds {', '.join(map(str, seeds))}",
        "",
        *md_table(header, rows),
        "",
    ]


def method_study(suite: Suite) -> list[str]:
    """The section, or nothing when the page shows the defaults alone."""
    if len(suite.variants) < 2:
        return []
    lines = [
        "## Method study: one option changed at a time",
        "",
        "Each cell: MaskTune's worst-group **test** accuracy (%), mean over the seeds, and in brackets the "
        "paired MaskTune − ERM difference in points (the run's kept model against its own ERM, per seed, "
        "then averaged). The last column counts the datasets where that difference is at least 0 and at "
        f"least +{100 * CLEAR_GAIN:.0f}. Every variant's run of a seed has the same ERM model (ERM is "
        "deterministic per seed; variants start from another run's ERM checkpoint where one exists), so "
        "the differences come from the masks and the finetune alone. Settings may be chosen on the tuning "
        "seeds; the held-out seeds check the choice.",
        "",
    ]
    for role in reversed(ROLES):  # tuning first: where a choice is made, then where it is checked
        seeds = suite.roles.get(role)
        if seeds:
            lines += knob_table(suite, role)
            left = [f"`{v}`" for v in suite.variants if v not in shown_variants(suite, seeds)]
            if left:
                lines += [f"Not run on these seeds, so left out of their tables: {', '.join(left)}.", ""]
    return lines
