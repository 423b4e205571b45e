"""Command line of the suite: ``generate``, ``run`` and ``report`` (see ``bench/suite/__init__.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.suite.check import check
from bench.suite.generate import DEFAULT_SIZES, SPECS, generate, parse_sizes
from bench.suite.report import collect, render
from bench.suite.runner import VARIANTS, dataset_folders, make_jobs, parse_seeds, parse_variants, run_jobs
from masktune_core.errors import ConfigError, MaskTuneError
from masktune_core.runs import atomic_path


def _generate(args: argparse.Namespace) -> None:
    sizes = parse_sizes(args.sizes)
    wanted = args.only.split(",") if args.only else [spec.name for spec in SPECS]
    unknown = sorted(set(wanted) - {spec.name for spec in SPECS})
    if unknown:
        raise MaskTuneError(
            f"only: unknown dataset {unknown[0]!r}; the suite has {', '.join(s.name for s in SPECS)}"
        )
    for spec in SPECS:
        if spec.name not in wanted:
            continue
        start = time.perf_counter()
        folder, written = generate(spec, Path(args.out), sizes, force=args.force)
        counts = check(folder)
        state = "written" if written else "up to date"
        print(f"{spec.name}: {state} in {time.perf_counter() - start:.1f} s, {folder}; groups {counts}")


def _run(args: argparse.Namespace) -> int:
    folders = dataset_folders(Path(args.data), args.datasets.split(",") if args.datasets else None)
    jobs = make_jobs(folders, parse_seeds(args.seeds), parse_variants(args.variants))
    outcomes = run_jobs(jobs, Path(args.out), workers=args.workers)
    failed = [name for name, outcome in outcomes.items() if not outcome.startswith(("done", "reused"))]
    if failed:
        print(f"{len(failed)} of {len(jobs)} runs did not finish: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace, argv: list[str]) -> None:
    roles = {
        role: parse_seeds(text, flag)
        for role, text, flag in (
            ("held-out", args.held_out_seeds, "held-out-seeds"),
            ("tuning", args.tuning_seeds, "tuning-seeds"),
        )
        if text
    }
    if not roles:
        raise ConfigError("seeds", "give --held-out-seeds and/or --tuning-seeds")
    folders = dataset_folders(Path(args.data), args.datasets.split(",") if args.datasets else None)
    suite = collect(folders, Path(args.runs), roles, parse_variants(args.variants))
    page = render(suite, " ".join(["python -m bench.suite", *argv]))
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    Path(args.out).chmod(0o644)  # atomic_path's temporary file is private; the page is documentation
    missing = sum(result is None for result in suite.results.values())
    print(f"wrote {args.out}: {len(suite.results) - missing} runs found, {missing} not run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write the suite's datasets and read each back")
    gen.add_argument("--out", required=True, help="folder that receives one sub-folder per dataset")
    gen.add_argument(
        "--sizes",
        default=",".join(str(DEFAULT_SIZES[split]) for split in ("train", "val", "test")),
        help="images in train,val,test (multiples of 4); default %(default)s",
    )
    gen.add_argument("--only", help="comma-separated dataset names (default: all)")
    gen.add_argument("--force", action="store_true", help="rewrite datasets whose card already matches")
    run = commands.add_parser("run", help="run every dataset x variant x seed through the product's CLI")
    run.add_argument("--data", required=True, help="the folder generate wrote")
    run.add_argument("--out", required=True, help="the run store (--runs-dir of every run)")
    run.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; default %(default)s")
    run.add_argument(
        "--variants",
        default="default",
        help=f"comma-separated, from: {', '.join(VARIANTS)}; default %(default)s",
    )
    run.add_argument("--datasets", help="comma-separated dataset names (default: all under --data)")
    run.add_argument("--workers", type=int, default=1, help="runs at a time (each single-threaded)")
    report = commands.add_parser("report", help="write docs/suite.md from the runs")
    report.add_argument("--data", required=True, help="the folder generate wrote")
    report.add_argument("--runs", required=True, help="the run store the runs went to")
    report.add_argument("--held-out-seeds", help="seeds that played no part in choosing settings")
    report.add_argument("--tuning-seeds", help="seeds that may have been looked at to choose settings")
    report.add_argument("--variants", default="default", help="comma-separated; default %(default)s")
    report.add_argument("--datasets", help="comma-separated dataset names (default: all under --data)")
    report.add_argument("--out", default="docs/suite.md", help="default %(default)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            _generate(args)
        elif args.command == "report":
            _report(args, argv)
        else:
            return _run(args)
    except MaskTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
