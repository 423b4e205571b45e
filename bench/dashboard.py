"""Render time of every dashboard page in AppTest, with a finished run in the store.

    .venv/bin/python bench/dashboard.py [--json] [--repeats 3] [--runs-dir DIR]

Without --runs-dir it first makes a finished run of the default experiment in a temporary store. Each page
is rendered once cold (imports, dataset and model loading, first computations) and then ``--repeats`` times
warm, in the same process with Streamlit's caches kept, which is what a user sees once models are cached;
the median warm render is reported against the 2 s target. The warm/cold ratio shows how much the caches
save.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamlit.testing.v1 import AppTest

from masktune_core.config import RunConfig
from masktune_core.pipeline import execute
from masktune_core.runs import RunStore
from studio.common import PAGES

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 2.0


def make_run(root: Path) -> str:
    run = RunStore(root).create(RunConfig(name="bench").resolved().to_dict())
    status = execute(run)
    assert status["state"] == "done", status
    return run.id


def render(page: str, run_id: str) -> float:
    at = AppTest.from_file(str(ROOT / PAGES[page]), default_timeout=300)
    at.query_params["run"] = run_id
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"page {page} raised: {at.exception[0].value}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs_dir or Path(tmp)
        run_id = RunStore(root).list()[0].id if args.runs_dir else make_run(root)
        os.environ["MASKTUNE_RUNS_DIR"] = str(root)
        rows = []
        for page in PAGES:
            cold = render(page, run_id)
            warm = statistics.median(render(page, run_id) for _ in range(args.repeats))
            rows.append({"page": page, "cold_s": cold, "warm_s": warm, "warm_over_cold": warm / cold})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"AppTest render times, finished default run in the store; {machine}")
    print("| page | cold (s) | warm, median (s) | warm / cold | warm under 2 s |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        met = "yes" if r["warm_s"] < TARGET_S else "no"
        print(f"| {r['page']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {r['warm_over_cold']:.2f} | {met} |")
    if args.json:
        print(json.dumps({"rows": rows, "machine": machine}))


if __name__ == "__main__":
    main()
