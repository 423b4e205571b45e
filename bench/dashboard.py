"""Cold and warm render time of every dashboard page, each page on a fresh server, with a finished run.

    .venv/bin/python bench/dashboard.py [--repeats 3] [--runs-dir DIR] [--json]
    .venv/bin/python bench/dashboard.py --page masks --runs-dir DIR    # one page, in this process

Without --runs-dir it first makes a finished run of the default experiment in a temporary store; with it,
the newest run there is used. Each page is rendered in its own new Python process (a fresh server: only
Streamlit is imported, every cache is empty), through Streamlit's AppTest with the run in its URL:

- **cold**: the first render, which pays for the page's imports (torch for the pages that run models),
  reading the run, decoding the dataset, loading models and the first saliency maps;
- **warm**: the median of ``--repeats`` further renders in the same process, Streamlit's caches kept,
  which is what every later visit costs.

Each is reported as wall time and as the process's CPU time: on a machine shared with other work the wall
time includes waiting for a core, which the CPU time does not.

Two baselines: in each page's process, before the page, the render of a one-line Streamlit script (what
AppTest itself costs); and the Masks page once more on a copy of the run without its stored
training-split predictions, so the page predicts that split itself, as it did before the pipeline kept
them. Nothing here is asserted; the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine_text  # noqa: E402
from masktune_core.runs import RunStore  # noqa: E402
from studio.common import PAGES  # noqa: E402

TARGET_S = 2.0
BEFORE = "masks, baseline: training split predicted by the page"
BARE_SCRIPT = "import streamlit as st\nst.write('baseline')\n"


def make_run(root: Path) -> str:
    from masktune_core.config import RunConfig
    from masktune_core.pipeline import execute

    run = RunStore(root).create(RunConfig(name="bench").resolved().to_dict())
    status = execute(run, echo=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    if status["state"] != "done":
        raise SystemExit(f"the default run ended {status['state']}: {status.get('error')}")
    return run.id


def measure_page(page: str, run_id: str, repeats: int) -> dict[str, float]:
    """Render the bare script, then ``page`` once cold and ``repeats`` times warm, in this process."""
    from streamlit.testing.v1 import AppTest

    def render(at: AppTest) -> tuple[float, float]:
        """Wall and CPU seconds (every thread of this process) of one render."""
        start, cpu = time.perf_counter(), time.process_time()
        at.run()
        elapsed = time.perf_counter() - start, time.process_time() - cpu
        if at.exception:
            raise RuntimeError(f"page {page} raised: {at.exception[0].value}")
        return elapsed

    bare = render(AppTest.from_string(BARE_SCRIPT, default_timeout=60))

    def page_test() -> AppTest:
        at = AppTest.from_file(str(ROOT / PAGES[page]), default_timeout=300)
        at.query_params["run"] = run_id
        return at

    cold = render(page_test())
    warm = [render(page_test()) for _ in range(repeats)]
    return {
        "page": page,
        "bare_s": bare[0],
        "cold_s": cold[0],
        "cold_cpu_s": cold[1],
        "warm_s": statistics.median(w[0] for w in warm),
        "warm_cpu_s": statistics.median(w[1] for w in warm),
    }


def as_before(root: Path, run_id: str, store: Path) -> Path:
    """A copy of the run without its stored training-split predictions, as runs were made before the
    pipeline kept them: the Masks page then predicts that split itself (the baseline)."""
    shutil.copytree(root / run_id, store / run_id, ignore=shutil.ignore_patterns(".lock"))
    (store / run_id / "predictions" / "train.npz").unlink()
    return store


def measure_fresh(page: str, run_id: str, root: Path, repeats: int) -> dict[str, float]:
    """``measure_page`` in a new Python process: a fresh server with nothing cached or imported."""
    command = [sys.executable, __file__, "--page", page, "--run-id", run_id, "--runs-dir", str(root)]
    command += ["--repeats", str(repeats), "--json"]
    env = {**os.environ, "MASKTUNE_RUNS_DIR": str(root)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"page {page}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict[str, float]], loads: tuple[float, float]) -> None:
    print(
        f"Fresh process per page, AppTest, finished default run; {machine_text()}; "
        f"1-min load average {loads[0]:.1f} before, {loads[1]:.1f} after"
    )
    print(
        "| page | bare AppTest render (s) | cold (s) | cold, CPU (s) | warm, median (s) | warm, CPU (s) "
        "| cold / bare | cold under 2 s (wall, CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        met = ", ".join("yes" if r[key] < TARGET_S else "no" for key in ("cold_s", "cold_cpu_s"))
        keys = ("bare_s", "cold_s", "cold_cpu_s", "warm_s", "warm_cpu_s")
        times = " | ".join(f"{r[key]:.2f}" for key in keys)
        print(f"| {r['page']} | {times} | {r['cold_s'] / r['bare_s']:.0f}x | {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm renders after the cold one (default 3)")
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="use the newest run here (default: make one)"
    )
    parser.add_argument("--page", choices=list(PAGES), help="measure this page only, in this process")
    parser.add_argument("--run-id", help="with --runs-dir: the run to show (default: its newest done)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON on the last line")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.page and args.runs_dir is None:
        parser.error("--page needs --runs-dir")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs_dir or Path(tmp)
        if args.runs_dir is None:
            run_id = make_run(root)
        else:
            runs = [r for r in RunStore(root).list() if r.status().get("state") == "done"]
            if not runs:
                raise SystemExit(f"--runs-dir {root}: no finished run")
            run_id = args.run_id or runs[0].id
        os.environ["MASKTUNE_RUNS_DIR"] = str(root)
        if args.page:
            row = measure_page(args.page, run_id, args.repeats)
            print(json.dumps(row) if args.json else row)
            return
        load_before = os.getloadavg()[0]
        rows = [measure_fresh(page, run_id, root, args.repeats) for page in PAGES]
        before = measure_fresh("masks", run_id, as_before(root, run_id, Path(tmp) / "before"), args.repeats)
        rows.append({**before, "page": BEFORE})
        loads = (load_before, os.getloadavg()[0])
    report(rows, loads)
    now = next(r for r in rows if r["page"] == "masks")
    speedup = " and ".join(f"{before[k] / now[k]:.1f}x" for k in ("cold_s", "cold_cpu_s"))
    print(
        f"\nMasks, cold: {now['cold_s']:.2f} s wall, {now['cold_cpu_s']:.2f} s CPU, against "
        f"{before['cold_s']:.2f} s and {before['cold_cpu_s']:.2f} s when the page predicts the training "
        f"split itself ({speedup} faster)"
    )
    if args.json:
        print(json.dumps({"rows": rows, "machine": machine_text(), "loads": loads}))


if __name__ == "__main__":
    main()
