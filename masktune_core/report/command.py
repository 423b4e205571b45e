"""The ``report`` subcommand: ``python -m masktune_core report RUN_ID|STUDY_ID [...] [--out FILE.html]``."""

from __future__ import annotations

import argparse

from masktune_core.runs import RunStore, default_runs_dir

HELP = "write one self-contained HTML report (and its JSON) of a run or a seed study"


def add_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument(
        "ids", nargs="+", metavar="RUN_ID|STUDY_ID", help="one run, a study, or runs of one study"
    )
    report.add_argument(
        "--out", default=None, help="the HTML file to write (default: <first id>-report.html)"
    )
    report.add_argument(
        "--runs-dir", default=None, help="run store (default: $MASKTUNE_RUNS_DIR, else runs/ in this folder)"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from masktune_core.report import build_report, check_out_path

    out = check_out_path(args.out or f"{args.ids[0]}-report.html")  # before any work: bad paths fail fast
    report = build_report(RunStore(args.runs_dir or default_runs_dir()), args.ids)
    html_path, json_path = report.write(out)
    size = html_path.stat().st_size
    print(f"wrote {json_path} and, {size / 1e6:.2f} MB:")
    print(html_path)
    return 0
