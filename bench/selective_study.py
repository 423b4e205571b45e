"""Regenerate the selective-classification study section of docs/results.md from finished runs.

It needs only finished runs of the default experiment (biased-digits, small CNN) for the given seeds; a
missing one is made first with ``python -m masktune_core run --seed S --runs-dir DIR`` (about 60-90 s on
one core). For each run, rule and test split it reports, from ``masktune_core.selective``:

- the curve summaries on test: full-range AURC [0, 1], AURC on the common range [0, a], AUGRC and E-AURC,
  each with its 95% percentile bootstrap interval (1,000 resamples, seed 0);
- one guaranteed-risk operating point per rule: thresholds fitted on val by SGR (target risk r*, 1 - delta
  confidence, one global threshold), with its test coverage and selective risk (with a 95% interval) and
  whether the target held on test.

The section sits between HTML comment markers and is replaced in place; the rest of the page is left as
it is (a page without the markers gets the section appended).

    .venv/bin/python bench/selective_study.py [--runs-dir DIR] [--seeds 10 11 12] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reproduce.stats import fmt, stat  # noqa: E402
from masktune_core import selective as sel  # noqa: E402
from masktune_core.runs import Run, RunStore, atomic_path  # noqa: E402

DATASET = "biased-digits"
SEEDS = (10, 11, 12)
TARGET_RISK = 0.02
DELTA = 0.05
START, END = "<!-- selective-study:start -->", "<!-- selective-study:end -->"
PUBLIC_FILE_MODE = 0o644


def find_run(store: RunStore, seed: int) -> Run | None:
    """The newest finished default-experiment run with this seed."""
    for run in store.list():
        config = run.config()
        if (
            config.get("dataset") == DATASET
            and config.get("seed") == seed
            and run.status().get("state") == "done"
        ):
            return run
    return None


def ensure_runs(runs_dir: Path, seeds: Sequence[int]) -> dict[int, Run]:
    store = RunStore(runs_dir)
    runs = {}
    for seed in seeds:
        run = find_run(store, seed)
        if run is None:
            print(f"seed {seed}: no finished run in {runs_dir}; running the default experiment", flush=True)
            command = [
                sys.executable,
                "-m",
                "masktune_core",
                "run",
                "--seed",
                str(seed),
                "--runs-dir",
                str(runs_dir),
            ]
            subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            run = find_run(store, seed)
            if run is None:
                raise SystemExit(f"error: seed {seed}: the run did not finish; see {runs_dir}")
        runs[seed] = run
    return runs


def scored(run: Run, rule: str, split: str) -> sel.Scored:
    p = run.predictions(split)
    return sel.score(rule, p["probs_erm"], p["probs_masktune"], p["label"], p.get("group"))


def analyse(run: Run, test_split: str) -> dict[str, dict[str, Any]]:
    """Per rule: curve summaries with intervals on ``test_split``, and the guaranteed operating point."""
    rankings = {rule: sel.rank(scored(run, rule, test_split)) for rule in sel.RULES}
    common = sel.common_coverage(list(rankings.values()))
    out = {}
    for rule, ranking in rankings.items():
        fit = sel.fit_risk(sel.rank(scored(run, rule, "val")), TARGET_RISK, DELTA)
        test = ranking.scored
        check = sel.check_on_test(fit, test)
        out[rule] = {
            "summary": sel.summarize(ranking, common if common > 0 else None),
            "intervals": sel.bootstrap_summary(ranking, common if common > 0 else None),
            "fit": fit,
            "check": check,
            "risk_ci": sel.bootstrap_point(test, fit.thresholds)["selective_risk"],
        }
    return out


def pct(value: float | None, digits: int = 2) -> str:
    return "undefined" if value is None else f"{100 * value:.{digits}f}"


def with_ci(value: float | None, interval: sel.Interval | None, digits: int = 2) -> str:
    if value is None:
        return "undefined"
    if interval is None or interval.low is None:
        return pct(value, digits)
    return f"{pct(value, digits)} [{pct(interval.low, digits)}, {pct(interval.high, digits)}]"


def curve_table(results: dict[int, dict[str, dict]], split: str) -> list[str]:
    lines = [
        "| rule | seed | largest coverage (%) | AURC [0, 1] (%) | AURC [0, a] (%) | AUGRC (%) | E-AURC (%) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rule, spec in sel.RULES.items():
        for seed, per_rule in results.items():
            s, ci = per_rule[rule]["summary"], per_rule[rule]["intervals"]
            lines.append(
                f"| {spec.label} | {seed} | {pct(s.max_coverage, 1)} | {with_ci(s.aurc, ci['aurc'])} "
                f"| {with_ci(s.aurc_common, ci.get('aurc_common'))} | {with_ci(s.augrc, ci['augrc'])} "
                f"| {with_ci(s.eaurc, ci['eaurc'])} |"
            )
    lines += ["", f"Mean ± sample standard deviation (n − 1) over the {len(results)} seeds, {split}:", ""]
    lines += [
        "| rule | AURC [0, 1] (%) | AURC [0, a] (%) | AUGRC (%) | E-AURC (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for rule, spec in sel.RULES.items():
        summaries = [per_rule[rule]["summary"] for per_rule in results.values()]
        cells = [
            fmt(stat(getattr(s, k) for s in summaries), digits=2, undefined="undefined")
            for k in ("aurc", "aurc_common", "augrc", "eaurc")
        ]
        lines.append(f"| {spec.label} | " + " | ".join(cells) + " |")
    commons = [next(iter(r.values()))["summary"].common_coverage for r in results.values()]
    lines += [
        "",
        "Common range a per seed (the agreement rate on this split): "
        + ", ".join(f"{pct(a, 1)}%" for a in commons)
        + ".",
    ]
    return lines


def guarantee_table(results: dict[int, dict[str, dict]]) -> list[str]:
    lines = [
        "| rule | seed | val coverage (%) | val risk (%) | val upper bound (%) | test coverage (%) "
        "| test selective risk (%) [95% CI] | target held on test |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for rule, spec in sel.RULES.items():
        for seed, per_rule in results.items():
            r = per_rule[rule]
            fit, check = r["fit"], r["check"]
            feasible = "" if fit.feasible else " (no threshold certifies r*; t = 1)"
            lines.append(
                f"| {spec.label} | {seed} | {pct(fit.val_coverage, 1)}{feasible} | {pct(fit.val_risk)} "
                f"| {pct(fit.val_bound)} | {pct(check['coverage'], 1)} "
                f"| {with_ci(check['selective_risk'], r['risk_ci'])} | {'yes' if check['held'] else 'no'} |"
            )
    return lines


def section(runs: dict[int, Run], splits: Sequence[str]) -> str:
    seeds = ", ".join(str(s) for s in runs)
    lines = [
        START,
        "## Selective classification on the default experiment: comparable curves, intervals, guarantees",
        "",
        f"Generated by `bench/selective_study.py` from finished default runs ({DATASET}, small CNN, the "
        f"recipe's defaults) on seeds {seeds}: **{len(runs)} seeds only**, so a mean over them is a rough "
        "indication and the per-seed intervals say more. Definitions (conventions in "
        "`masktune_core/selective/metrics.py`):",
        "",
        "- **AURC [0, 1]**: the area under the risk–coverage step curve over the whole coverage range. "
        "A rule that cannot reach some coverage (the agreement rule never accepts a disagreement) accepts "
        "nothing more there, so its risk stays the risk at its largest coverage. Tied confidences form "
        "one block.",
        "- **AURC [0, a]**: the mean selective risk over [0, a], where a is the largest coverage every rule "
        "reaches on that run's split.",
        "- **AUGRC** (Traub et al., 2024): the area under the generalized risk (accepted and wrong, over all "
        "samples) against coverage: the mean share of undetected failures.",
        "- **E-AURC**: AURC [0, 1] minus that of a perfect ranking of the same accepted samples.",
        "- **Intervals**: 95% percentile bootstrap over the test split's samples, 1,000 resamples, seed 0.",
        f"- **Guaranteed operating point**: one global threshold fitted on **val** by SGR (Geifman & "
        f"El-Yaniv, 2017) to a selective risk r* = {TARGET_RISK:.0%} with confidence "
        f"1 − δ = {1 - DELTA:.0%}: "
        "bisection over the val thresholds, Clopper–Pearson upper bound at δ / (number of thresholds "
        "tried). Reported on test; nothing here is tuned on a test split.",
        "",
    ]
    for split in splits:
        results = {seed: analyse(run, split) for seed, run in runs.items()}
        lines += [f"### {split}: curve summaries on test", "", *curve_table(results, split), ""]
        lines += [f"### {split}: guaranteed-risk operating point per rule", "", *guarantee_table(results), ""]
    lines += [
        "Neither test split is distributed like val. Val carries the square with the training bias "
        "(on 99% of class-0 and 1% of class-1 images), `test_original` has no square and `test_biased` "
        "reverses it, so the ERM model, which learnt the square, is wrong on nearly every `test_biased` "
        "sample; where both models agree there they share that shortcut, and the agreement rule accepts "
        "samples at close to 0% accuracy. A guarantee fitted on val is a statement about data like val: "
        "the last column shows it does not carry over to either shifted split, for any rule. That is the "
        "shortcut's cost, measured, not a fault of the bound.",
        END,
    ]
    return "\n".join(lines) + "\n"


def replace_section(page: str, new: str) -> str:
    if START in page and END in page:
        head, rest = page.split(START, 1)
        tail = rest.split(END, 1)[1]
        return head + new.rstrip("\n") + tail
    return page.rstrip("\n") + "\n\n" + new


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs", help="run store (default: runs/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds (default: 10 11 12)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md", help="page to update")
    args = parser.parse_args(argv)
    runs = ensure_runs(args.runs_dir, args.seeds)
    splits = [
        s for s in ("test_original", "test_biased") if s in next(iter(runs.values())).prediction_splits()
    ]
    page = args.out.read_text() if args.out.exists() else "# Results\n"
    text = replace_section(page, section(runs, splits))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
        tmp.chmod(PUBLIC_FILE_MODE)
    print(f"wrote the selective study section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
