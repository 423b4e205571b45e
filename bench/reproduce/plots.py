"""The page's figures (matplotlib, imported when drawn), written as PNG files anyone may read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.reproduce.analysis import GROUP_RULES, SELECTIVE_RULES, Outcomes, Result, select
from bench.reproduce.grid import SHORTCUT_METHODS
from bench.reproduce.markdown import PUBLIC_FILE_MODE
from bench.reproduce.stats import seeds_text, stat
from masktune_core.runs import atomic_path


def save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        tmp.chmod(PUBLIC_FILE_MODE)


def figure_accuracy(results: Sequence[Result], datasets: Sequence[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    x = np.arange(len(SHORTCUT_METHODS))
    for ax, dataset in zip(axes[0], datasets, strict=True):
        runs = select(results, "shortcut", dataset)
        for offset, split, color in ((-0.2, "test_original", "#9ca3af"), (0.2, "test_biased", "#2563eb")):
            stats = [stat(r.accuracy(split, m) for r in runs) for m, _ in SHORTCUT_METHODS]
            means = [100 * (s.mean or 0.0) for s in stats]
            errors = [100 * (s.std or 0.0) for s in stats]
            ax.bar(x + offset, means, 0.4, yerr=errors, capsize=3, color=color, label=split)
        ax.set_xticks(x, [label.replace(", ", "\n") for _, label in SHORTCUT_METHODS], fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{dataset} ({seeds_text(len(runs))}, mean ± std)")
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
    plt.close(fig)


def figure_risk_coverage(outcomes: Outcomes, path: Path) -> None:
    """Every rule's test risk-coverage curve, first seed of each dataset."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(outcomes), figsize=(5.5 * len(outcomes), 4), squeeze=False)
    for ax, (dataset, per_seed) in zip(axes[0], outcomes.items(), strict=True):
        result, rules = per_seed[0]
        for rule in SELECTIVE_RULES:
            curve = rules[rule.key].curve
            ax.plot(curve.coverage * 100, curve.risk * 100, label=rule.label, lw=1.4)
        ax.set_xlabel("coverage on test (%)")
        ax.set_ylabel("selective error on test (%)")
        ax.set_xlim(0, 100)
        ax.set_title(f"{dataset}, seed {result.job.seed}")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def figure_groups(outcomes: Outcomes, path: Path) -> None:
    """Per-group test_biased risk-coverage curves of GROUP_RULES, first seed of each dataset."""
    import matplotlib.pyplot as plt

    rules = [r for r in SELECTIVE_RULES if r.key in GROUP_RULES]
    fig, axes = plt.subplots(
        len(outcomes), len(rules), figsize=(5.5 * len(rules), 3.8 * len(outcomes)), squeeze=False
    )
    for row, (dataset, per_seed) in enumerate(outcomes.items()):
        result, outcome = per_seed[0]
        names = result.metrics["dataset"]["group_names"]
        for ax, rule in zip(axes[row], rules, strict=True):
            for group, curve in outcome[rule.key].group_curves.items():
                ax.plot(curve.coverage * 100, curve.risk * 100, label=names[group], lw=1.4)
            ax.set_xlabel("coverage of the group on test_biased (%)")
            ax.set_ylabel("selective error (%)")
            ax.set_xlim(0, 100)
            ax.set_title(f"{dataset}: {rule.label}, seed {result.job.seed}", fontsize=9)
            ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)
