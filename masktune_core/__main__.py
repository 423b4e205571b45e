"""Command line: ``python -m masktune_core {run,resume,list,show,cancel}``.

Bad input prints one line on stderr naming the field or file, exits non-zero and leaves no run behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
from typing import Any, NoReturn

from masktune_core import distributed
from masktune_core.config import RunConfig
from masktune_core.errors import MaskTuneError
from masktune_core.runs import Run, RunStore, default_runs_dir, now_iso, process_start_time


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefix matching: a typo such as --epoch must be an error, not silently taken as --epochs.
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, so the CLI can never drift from the config."""
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if "bool" in str(f.type):
            parser.add_argument(flag, action="store_true", default=None)
        else:
            parser.add_argument(flag, default=None, metavar=f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m masktune_core", description="MaskTune: ERM -> saliency masks -> finetune."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run an experiment (default: biased-digits with small-cnn)")
    _config_flags(run)
    run.add_argument("--config", help="JSON file of options; flags given here override it")
    run.add_argument("--runs-dir", default=None, help="run store (default: $MASKTUNE_RUNS_DIR or runs/)")

    resume = commands.add_parser("resume", help="continue an interrupted, failed or queued run")
    resume.add_argument("run_id")
    resume.add_argument("--runs-dir", default=None)
    resume.add_argument("--queue", action="store_true", help="wait for a free job slot first")

    listing = commands.add_parser("list", help="list runs")
    listing.add_argument("--runs-dir", default=None)
    listing.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="print a run's config, status and metrics")
    show.add_argument("run_id")
    show.add_argument("--runs-dir", default=None)
    show.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", help="stop a queued or running run")
    cancel.add_argument("run_id")
    cancel.add_argument("--runs-dir", default=None)
    return parser


# ---------------------------------------------------------------------- commands
def _stop_flag() -> list[bool]:
    """A flag SIGTERM sets, polled between training steps, so a cancel ends as 'cancelled', cleanly."""
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        flag[0] = True

    signal.signal(signal.SIGTERM, handler)
    return flag


def _echo(line: str) -> None:
    print(line, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    if args.config:
        values.update(RunConfig.from_file(args.config).to_dict())
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    values.update({k: v for k, v in given.items() if v is not None})
    config = RunConfig.from_dict(values).resolved()
    store = RunStore(args.runs_dir or default_runs_dir())
    distributed.init(config.device)
    if distributed.launched():  # under torchrun: rank 0 makes the run, the other ranks join it
        config = dataclasses.replace(config, nproc=distributed.world_size())
    run = store.create(config.to_dict()) if distributed.is_main() else None
    run = store.get(distributed.broadcast(None if run is None else run.id))
    flag = _stop_flag()
    with _owned(run):
        status = _execute(run, flag)
    if not distributed.is_main():
        return 0 if status["state"] == "done" else 1
    if status["state"] == "failed" and status.get("stage") == "data":
        # Bad input found while loading data: say so and leave no half-made run behind.
        shutil.rmtree(run.path, ignore_errors=True)
        raise MaskTuneError(status["error"])
    if status["state"] != "done":
        print(f"error: run {status['state']}: {status.get('error')} ({run.path})", file=sys.stderr)
        return 1
    _print_headline(run)
    print(run.path)
    return 0


def _execute(run: Run, flag: list[bool]) -> dict[str, Any]:
    from masktune_core.pipeline import execute

    nproc = int(run.config().get("nproc") or 1)
    if nproc > 1 and not distributed.launched():
        return distributed.launch(run, nproc)  # torchrun, resuming the run on nproc processes
    return execute(run, should_stop=lambda: flag[0], echo=_echo)


def _owned(run: Run) -> contextlib.AbstractContextManager[None]:
    """The run's lock, held by the process that owns the run: rank 0, unless the launcher that
    started torchrun holds it already."""
    if not distributed.is_main() or os.environ.get(distributed.LOCK_HELD_ENV) == run.id:
        return contextlib.nullcontext()
    return run.exclusive()


def cmd_resume(args: argparse.Namespace) -> int:
    from masktune_core.jobs import queue_slot

    flag = _stop_flag()
    store = RunStore(args.runs_dir or default_runs_dir())
    run = store.get(args.run_id)
    distributed.init(run.load_config().get("device", "auto"))
    if not distributed.is_main():  # a rank of a distributed resume: rank 0 owns the run
        return 0 if _execute(run, flag)["state"] == "done" else 1
    if run.status()["state"] == "done":
        print(f"run {run.id} is already done", file=sys.stderr)
        print(run.path)
        return 0
    with _owned(run):
        previous = run.status()
        done = ", ".join(previous.get("stages_done") or []) or "none"
        if previous.get("state") == "queued":  # started by jobs.start/submit, which logged why
            run.log(f"job process {os.getpid()} started; stages already done: {done}")
        else:
            run.log(
                f"resumed after state {previous.get('state')!r} at stage {previous.get('stage')!r}; "
                f"stages already done: {done}"
            )
        # This process owns the run from here on; a cancel that reached it is in ``flag``.
        owner = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid()), "cancel_requested": False}
        try:
            if args.queue:
                queued_at = previous.get("queued_at") if previous.get("state") == "queued" else None
                run.update_status(state="queued", queued_at=queued_at or now_iso(), **owner)
                with queue_slot(run, store, lambda: flag[0]):
                    status = _execute(run, flag)
            else:
                run.update_status(**owner)
                status = _execute(run, flag)
        except KeyboardInterrupt:
            status = run.update_status(state="cancelled", error="cancelled by the user", finished=now_iso())
    if status["state"] != "done":
        print(f"error: run {status['state']}: {status.get('error')} ({run.path})", file=sys.stderr)
        return 1
    print(run.path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [_summary(run) for run in RunStore(args.runs_dir or default_runs_dir()).list()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet: start one with  python -m masktune_core run")
        return 0
    header = f"{'run':40} {'state':11} {'stage':12} {'dataset':22} {'backbone':10} {'ERM':>7} {'MaskTune':>9}"
    print(header)
    for row in rows:
        erm, mt = row["headline"].get("erm"), row["headline"].get("masktune")
        print(
            f"{row['id']:40} {row['state']:11} {row['stage'] or '-':12} {row['dataset']:22} "
            f"{row['backbone'] or '-':10} {_pct(erm):>7} {_pct(mt):>9}"
        )
    print("(ERM / MaskTune: accuracy on each run's main test split)")
    return 0


def _summary(run: Run) -> dict[str, Any]:
    config, status, metrics = run.config(), run.status(), run.metrics() or {}
    main = metrics.get("main_test_split")
    split = metrics.get("splits", {}).get(main, {})
    return {
        "id": run.id,
        "path": str(run.path),
        "state": status.get("state"),
        "stage": status.get("stage"),
        "progress": status.get("progress"),
        "dataset": config.get("dataset"),
        "backbone": config.get("backbone"),
        "main_test_split": main,
        "headline": {name: model.get("accuracy") for name, model in split.items()},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print_headline(run: Run) -> None:
    metrics = run.metrics() or {}
    for split, models in metrics.get("splits", {}).items():
        parts = []
        for name, m in models.items():
            wga = m.get("worst_group_accuracy")
            parts.append(
                f"{name} acc {_pct(m['accuracy'])}"
                + (f" (worst group {_pct(wga)})" if wga is not None else "")
            )
        print(f"{split:14} " + " | ".join(parts))


def cmd_show(args: argparse.Namespace) -> int:
    run = RunStore(args.runs_dir or default_runs_dir()).get(args.run_id)
    report = {"config": run.config(), "status": run.status(), "metrics": run.metrics()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"run {run.id}  ({run.path})")
    status = report["status"]
    progress = 100 * (status.get("progress") or 0)
    print(f"state {status.get('state')}  stage {status.get('stage')}  progress {progress:.0f}%")
    if status.get("error"):
        print(f"error: {status['error']}")
    print("config: " + ", ".join(f"{k}={v}" for k, v in report["config"].items() if v is not None))
    _print_headline(run)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from masktune_core.jobs import cancel

    run = RunStore(args.runs_dir or default_runs_dir()).get(args.run_id)
    cancel(run)
    print(f"cancel requested for {run.id}")
    return 0


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "list": cmd_list, "show": cmd_show, "cancel": cmd_cancel}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MaskTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk or permission failure outside the run store's own checks
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
