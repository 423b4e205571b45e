"""The command line: plan the grid, run it, write the page (see the package's docstring)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import reproduce
from bench.reproduce.cost import plan
from bench.reproduce.page import write_page
from bench.reproduce.pool import run_grid
from masktune_core.errors import MaskTuneError
from masktune_core.runs import RunStore

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reproduce", description=reproduce.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="reduced grid, a smoke test of a few minutes")
    parser.add_argument(
        "--out", default=str(ROOT / "docs"), help="where results.md and img/ go (default docs/)"
    )
    parser.add_argument("--runs-dir", help="keep the runs here and reuse finished ones (default: a temp dir)")
    parser.add_argument("--keep-runs", action="store_true", help="keep the default temporary runs directory")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at a time, each in its own single-threaded process (default 1: one run, all threads)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        jobs, estimated, notes = plan(args.quick, args.workers)
    except MaskTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = sum(estimated.values()) / args.workers
    print(
        f"{len(jobs)} runs, estimated {total / 60:.0f} min with {args.workers} at a time "
        "(an upper bound on an idle 2-core machine)",
        flush=True,
    )
    for note in notes:
        print(f"note: {note}", flush=True)
    temporary = args.runs_dir is None
    runs_dir = Path(tempfile.mkdtemp(prefix="masktune-reproduce-")) if temporary else Path(args.runs_dir)
    try:
        results, reused = run_grid(RunStore(runs_dir), jobs, estimated, args.workers)
        command = " ".join(
            [".venv/bin/python -m bench.reproduce", *(argv if argv is not None else sys.argv[1:])]
        )
        page_args = {
            "quick": args.quick,
            "command": command,
            "notes": notes,
            "estimate_s": total,
            "wall_s": time.monotonic() - started,
            "reused": reused,
            "loads": (load_before, os.getloadavg()[0]),
        }
        path = write_page(Path(args.out), page_args, results)
    except MaskTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if temporary and not args.keep_runs:
            shutil.rmtree(runs_dir, ignore_errors=True)
        elif temporary:
            print(f"runs kept in {runs_dir}", flush=True)
    print(f"wrote {path} in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
