"""Time what the threshold tuner recomputes, above all a slider move.

For each rule and size (a validation and a test split of N predictions each, K = 10 classes, 4 groups):

- ``score``: once per (rule, split), cached by the dashboard;
- ``curves``: ``rank``, ``risk_coverage`` overall, per class and per group, and ``summarize``, on val and
  test: once per (rule, split, weights), cached;
- ``bootstrap``: ``bootstrap_summary`` of the test curve (1,000 resamples): once per (rule, split,
  weights), cached, off the slider path;
- ``slider move``: ``evaluate`` on val and test with per-class thresholds and weights, plus
  ``bootstrap_point`` (1,000 resamples) on test: everything a threshold slider move recomputes. It is
  held to the targets (10k < 20 ms, 100k < 200 ms) by its median CPU time, which a busy shared machine
  inflates less than wall-clock time (both are reported; numpy runs these on one thread);
- ``from scratch``: score + curves + slider move, the same-process baseline: what a slider move would
  cost without the caches.

    .venv/bin/python bench/selective.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from masktune_core import selective as sel  # noqa: E402

K = 10
GROUPS = 4
TARGET_MS = {10_000: 20.0, 100_000: 200.0}
REPEATS = {10_000: 31, 100_000: 11}
BOOTSTRAP_REPEATS = 3


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Two correlated models on a 10-class problem whose groups shift the labels, as float32 softmax."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, GROUPS, n)
    labels = (rng.integers(0, K, n) + (groups == 0)) % K
    logits = rng.normal(size=(n, K)) + 2.5 * np.eye(K)[labels]
    erm_logits = logits + rng.normal(scale=1.0, size=(n, K))

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    return softmax(erm_logits), softmax(logits), labels, groups


def median_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median wall-clock and CPU time of ``fn`` in ms. CPU time excludes waiting for a shared core."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"wall": 1e3 * statistics.median(wall), "cpu": 1e3 * statistics.median(cpu)}


def operating_point(scored: sel.Scored) -> tuple[sel.Thresholds, list[float]]:
    """A tuner state with overrides and weights; the threshold sits inside the rule's confidence range."""
    weights = [0.8 if c in (2, 3, 4, 5) else 1.0 for c in range(K)]
    t = float(np.median(scored.confidence[np.isfinite(scored.confidence)]))
    per_class: list[float | None] = [None] * K
    per_class[1] = min(1.0, 1.1 * t)
    return sel.Thresholds.build(K, t, per_class, weights), weights


def curves(scored: sel.Scored, weights: list[float]) -> None:
    ranking = sel.rank(scored, weights)
    sel.risk_coverage(ranking)
    sel.risk_coverage_by(ranking, "class")
    sel.risk_coverage_by(ranking, "group")
    sel.summarize(ranking, 0.9)


def machine() -> dict:
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def measure(rule: str, val: tuple, test: tuple, repeats: int) -> dict[str, dict[str, float]]:
    """Median times of one rule's work on a validation and a test split."""
    scored = {"val": sel.score(rule, *val), "test": sel.score(rule, *test)}
    thresholds, weights = operating_point(scored["val"])
    test_rank = sel.rank(scored["test"], weights)

    def move() -> None:
        for s in scored.values():
            sel.evaluate(s, thresholds)
        sel.bootstrap_point(scored["test"], thresholds)

    def all_curves() -> None:
        for s in scored.values():
            curves(s, weights)

    def from_scratch() -> None:
        for split in (val, test):
            curves(sel.score(rule, *split), weights)
        move()

    return {
        "score": median_ms(lambda: (sel.score(rule, *val), sel.score(rule, *test)), repeats),
        "curves": median_ms(all_curves, repeats),
        "bootstrap": median_ms(lambda: sel.bootstrap_summary(test_rank, 0.9), BOOTSTRAP_REPEATS),
        "move": median_ms(move, repeats),
        "scratch": median_ms(from_scratch, repeats),
    }


def run() -> dict:
    load_before = os.getloadavg()
    rows = []
    for n, repeats in REPEATS.items():
        val, test = synthetic_split(n, seed=1), synthetic_split(n, seed=2)
        for rule in sel.RULES:
            ms = measure(rule, val, test, repeats)
            rows.append(
                {
                    "rule": rule,
                    "n": n,
                    "ms": ms,
                    "target_ms": TARGET_MS[n],
                    "target_met": ms["move"]["cpu"] < TARGET_MS[n],
                    "scratch_over_move": ms["scratch"]["cpu"] / ms["move"]["cpu"],
                }
            )
    return {
        "machine": machine(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "k": K,
        "groups": GROUPS,
        "rows": rows,
    }


def table(result: dict) -> str:
    """Markdown: CPU-time medians, with the wall-clock median of a slider move beside its CPU time."""
    lines = [
        "| rule | N per split | score (cached) | curves (cached) | bootstrap (cached) | slider move, CPU "
        "| slider move, wall | target | met | from scratch, CPU | from scratch / move |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        t = r["ms"]
        lines.append(
            f"| {r['rule']} | {r['n']:,} | {t['score']['cpu']:.1f} ms | {t['curves']['cpu']:.1f} ms "
            f"| {t['bootstrap']['cpu']:.0f} ms | {t['move']['cpu']:.1f} ms | {t['move']['wall']:.1f} ms "
            f"| < {r['target_ms']:.0f} ms | {'yes' if r['target_met'] else 'NO'} "
            f"| {t['scratch']['cpu']:.1f} ms | {r['scratch_over_move']:.1f}x |"
        )
    m, load = result["machine"], result["load_average_1min"]
    lines.append("")
    lines.append(
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, numpy {m['numpy']}; "
        f"1-minute load average {load['before']:.1f} before, {load['after']:.1f} after."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()
    result = run()
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
