"""The whole page: analyse the runs, draw the figures, render the markdown and write it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.reproduce.analysis import Result, analyse_selective, select
from bench.reproduce.claims import claim_randmask, claim_selective, claim_shortcut
from bench.reproduce.markdown import DEFINITIONS, Page, header, summary, write_text
from bench.reproduce.plots import figure_accuracy, figure_groups, figure_risk_coverage
from bench.reproduce.sections import ablation_section, shortcut_section, timing_section
from bench.reproduce.sections_selective import (
    claims_section,
    groups_section,
    limits_section,
    selective_section,
)


def render(page: Page) -> str:
    claims = [claim_shortcut(page.results, page.shortcut), claim_randmask(page.results, page.shortcut)]
    claims.append(claim_selective(page.selective))
    lines = [
        *header(page),
        *summary(claims),
        "## Definitions",
        "",
        *DEFINITIONS,
        "",
        *shortcut_section(page),
        *ablation_section(page),
        *timing_section(page),
        *selective_section(page),
        *groups_section(page),
        *claims_section(claims),
        *limits_section(page),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_page(out: Path, page_args: dict[str, Any], results: list[Result]) -> Path:
    """Analyse the runs, draw the figures into out/img and write out/results.md; returns the page's path."""
    shortcut = list(dict.fromkeys(r.job.dataset for r in results if r.job.study == "shortcut"))
    selective_datasets = dict.fromkeys(r.job.dataset for r in results if r.job.study == "selective")
    selective = {
        d: [(r, analyse_selective(r, "test", "masktune")) for r in select(results, "selective", d)]
        for d in selective_datasets
    }
    # MaskTune after one iteration, as in the selective study; test_biased is where the groups disagree.
    groups = {
        d: [(r, analyse_selective(r, "test_biased", "masktune_1")) for r in select(results, "shortcut", d)]
        for d in shortcut
    }
    figures = {
        "accuracy": "img/reproduce-accuracy.png",
        "risk_coverage": "img/reproduce-risk-coverage.png",
        "groups": "img/reproduce-groups.png",
    }
    import matplotlib

    matplotlib.use("Agg")
    figure_accuracy(results, shortcut, out / figures["accuracy"])
    figure_risk_coverage(selective, out / figures["risk_coverage"])
    figure_groups(groups, out / figures["groups"])
    page = Page(
        results=results, shortcut=shortcut, selective=selective, groups=groups, figures=figures, **page_args
    )
    path = out / "results.md"
    write_text(path, render(page))
    return path
