"""Command line of the suite: ``generate``, ``run``, ``report``, and ``all`` (the three in turn)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.suite.check import check
from bench.suite.generate import DEFAULT_SIZES, SPECS, generate, parse_sizes
from bench.suite.report import render
from bench.suite.runner import VARIANTS, dataset_folders, make_jobs, parse_seeds, parse_variants, run_jobs
from bench.suite.tables import collect
from masktune_core.errors import ConfigError, MaskTuneError
from masktune_core.runs import atomic_path


def _generate(args: argparse.Namespace) -> None:
    sizes = parse_sizes(args.sizes)
    wanted = args.only.split(",") if args.only else [spec.name for spec in SPECS]
    unknown = sorted(set(wanted) - {spec.name for spec in SPECS})
    if unknown:
        names = ", ".join(spec.name for spec in SPECS)
        raise ConfigError("only", f"unknown dataset {unknown[0]!r}; the suite has {names}")
    for spec in SPECS:
        if spec.name not in wanted:
            continue
        start = time.perf_counter()
        folder, written = generate(spec, Path(args.data), sizes, force=args.force)
        counts = check(folder)
        state = "written" if written else "up to date"
        print(f"{spec.name}: {state} in {time.perf_counter() - start:.1f} s, {folder}; groups {counts}")


def _folders(args: argparse.Namespace) -> list[Path]:
    return dataset_folders(Path(args.data), args.datasets.split(",") if args.datasets else None)


def _run(args: argparse.Namespace, seeds: list[int]) -> int:
    jobs = make_jobs(_folders(args), seeds, parse_variants(args.variants))
    outcomes = run_jobs(jobs, Path(args.runs), workers=args.workers)
    failed = [name for name, outcome in outcomes.items() if not outcome.startswith(("done", "reused"))]
    if failed:
        print(f"{len(failed)} of {len(jobs)} runs did not finish: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _roles(args: argparse.Namespace) -> dict[str, list[int]]:
    given = (
        ("held-out", args.held_out_seeds, "held-out-seeds"),
        ("tuning", args.tuning_seeds, "tuning-seeds"),
    )
    roles = {role: parse_seeds(text, flag) for role, text, flag in given if text}
    if not roles:
        raise ConfigError("seeds", "give --held-out-seeds and/or --tuning-seeds")
    return roles


def _report(args: argparse.Namespace, argv: list[str]) -> None:
    suite = collect(_folders(args), Path(args.runs), _roles(args), parse_variants(args.variants))
    page = render(suite, " ".join(["python -m bench.suite", *argv]))
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    Path(args.out).chmod(0o644)  # atomic_path's temporary file is private; the page is documentation
    missing = sum(result is None for result in suite.results.values())
    print(f"wrote {args.out}: {len(suite.results) - missing} runs found, {missing} not run")


def _all(args: argparse.Namespace, argv: list[str]) -> int:
    _generate(args)
    roles = _roles(args)
    status = _run(args, sorted({seed for seeds in roles.values() for seed in seeds}))
    _report(args, argv)  # also after failed runs: the page marks them "not run"
    return status


def _generation_options(parser: argparse.ArgumentParser) -> None:
    sizes = ",".join(str(DEFAULT_SIZES[split]) for split in ("train", "val", "test"))
    parser.add_argument(
        "--sizes", default=sizes, help="images in train,val,test (multiples of 4); %(default)s"
    )
    parser.add_argument("--only", help="comma-separated dataset names to generate (default: all)")
    parser.add_argument("--force", action="store_true", help="rewrite datasets whose card already matches")


def _selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", help="comma-separated dataset names (default: all under --data)")
    variants = ", ".join(VARIANTS)
    parser.add_argument(
        "--variants", default="default", help=f"comma-separated, from: {variants}; %(default)s"
    )


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--held-out-seeds", help="seeds that played no part in choosing settings")
    parser.add_argument("--tuning-seeds", help="seeds that may have been looked at to choose settings")
    parser.add_argument("--out", default="docs/suite.md", help="the page; default %(default)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write the datasets and read each back")
    gen.add_argument("--out", dest="data", required=True, help="the folder that receives the datasets")
    _generation_options(gen)
    run = commands.add_parser("run", help="run every dataset x variant x seed through the product's CLI")
    run.add_argument("--data", required=True, help="the folder of generated datasets")
    run.add_argument("--out", dest="runs", required=True, help="the run store (--runs-dir of every run)")
    run.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; default %(default)s")
    run.add_argument("--workers", type=int, default=1, help="runs at a time, each single-threaded")
    _selection_options(run)
    report = commands.add_parser("report", help="write the page from the runs")
    report.add_argument("--data", required=True, help="the folder of generated datasets")
    report.add_argument("--runs", required=True, help="the run store the runs went to")
    _selection_options(report)
    _report_options(report)
    every = commands.add_parser("all", help="generate, run every seed of every role, then report")
    every.add_argument("--data", required=True, help="the folder of generated datasets")
    every.add_argument("--runs", required=True, help="the run store (--runs-dir of every run)")
    every.add_argument("--workers", type=int, default=1, help="runs at a time, each single-threaded")
    _generation_options(every)
    _selection_options(every)
    _report_options(every)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            _generate(args)
        elif args.command == "run":
            return _run(args, parse_seeds(args.seeds))
        elif args.command == "report":
            _report(args, argv)
        else:
            return _all(args, argv)
    except MaskTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
