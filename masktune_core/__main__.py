"""Command line: ``masktune {run,resume,list,show,cancel,report,studio}`` (or ``python -m masktune_core``).

Each subcommand is one ``Command`` in ``COMMANDS``: its help line, a function adding its options and a
function running it. Bad input prints one line on stderr naming the field or file, exits 2 and leaves no
run behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Callable
from typing import Any, NoReturn

from masktune_core import jobs, selective_cli, studies
from masktune_core.config import RunConfig, option_help
from masktune_core.errors import MaskTuneError
from masktune_core.report import command as report_command
from masktune_core.runs import Run, RunStore, default_runs_dir


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefix matching: a typo such as --epoch must be an error, not silently taken as --epochs.
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


class _ConfigHelp(argparse.HelpFormatter):
    """Help lines for RunConfig flags are written when --help is asked for, not when the parser is built:
    the dataset and backbone choices come from registries that import torch, which ``list`` never needs."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action.help, _FieldHelp):
            return option_help(action.help.field).replace("%", "%%")
        return action.help


class _FieldHelp(str):
    """A help placeholder naming the RunConfig field whose help ``_ConfigHelp`` writes."""

    field: str

    def __new__(cls, field: str) -> _FieldHelp:
        text = super().__new__(cls, field)
        text.field = field
        return text


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, its help from the field itself, so the CLI can never drift."""
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if "bool" in str(f.type):
            parser.add_argument(flag, action="store_true", default=None, help=_FieldHelp(f.name))
        else:
            parser.add_argument(flag, default=None, metavar=f.name.upper(), help=_FieldHelp(f.name))


def _runs_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-dir", default=None, help="run store (default: $MASKTUNE_RUNS_DIR, else runs/ in this folder)"
    )


def _store(args: argparse.Namespace) -> RunStore:
    return RunStore(args.runs_dir or default_runs_dir())


def _echo(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------- commands
def run_arguments(parser: argparse.ArgumentParser) -> None:
    _config_flags(parser)
    parser.add_argument(
        "--config", help="JSON file of options; flags given beside it override it (default: none)"
    )
    parser.add_argument(
        "--seeds", default=None, help="e.g. 0,1,2: one run per seed, as one seed study (default: one run)"
    )
    _runs_dir_flag(parser)


def cmd_run(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    if args.config:
        values.update(RunConfig.from_file(args.config).to_dict())
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    values.update({k: v for k, v in given.items() if v is not None})
    config = RunConfig.from_dict(values).resolved()
    from masktune_core import distributed

    store = _store(args)
    distributed.init(config.device)
    if distributed.launched():  # under torchrun: rank 0 makes the runs, the other ranks join them
        config = dataclasses.replace(config, nproc=distributed.world_size())
    if args.seeds is None:
        return _run_one(store, config)
    configs = studies.seed_configs(config, studies.parse_seeds(args.seeds))
    codes = [_run_one(store, one) for one in configs]
    if distributed.is_main():
        print(f"study {configs[0].study}")
    return max(codes)


def _run_one(store: RunStore, config: RunConfig) -> int:
    from masktune_core import distributed

    run = store.create(config.to_dict()) if distributed.is_main() else None
    run = store.get(distributed.broadcast(None if run is None else run.id))
    status = jobs.work_on(run, store, queue=False, should_stop=jobs.stop_on_sigterm(), echo=_echo)
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


def resume_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run's id (see list)")
    _runs_dir_flag(parser)
    parser.add_argument(
        "--queue", action="store_true", help="wait for a free job slot first (default: off; jobs use it)"
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from masktune_core import distributed

    should_stop = jobs.stop_on_sigterm()
    store = _store(args)
    run = store.get(args.run_id)
    distributed.init(run.load_config().get("device", "auto"))
    if not distributed.is_main():  # a rank of a distributed resume: rank 0 owns the run
        status = jobs.work_on(run, store, queue=False, should_stop=should_stop, echo=_echo)
        return 0 if status["state"] == "done" else 1
    if run.status()["state"] == "done":
        print(f"run {run.id} is already done", file=sys.stderr)
        print(run.path)
        return 0
    status = jobs.work_on(run, store, queue=args.queue, should_stop=should_stop, echo=_echo)
    if status["state"] != "done":
        print(f"error: run {status['state']}: {status.get('error')} ({run.path})", file=sys.stderr)
        return 1
    print(run.path)
    return 0


def list_arguments(parser: argparse.ArgumentParser) -> None:
    _runs_dir_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")


def cmd_list(args: argparse.Namespace) -> int:
    rows = [_summary(run) for run in _store(args).list()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet: start one with  masktune run")
        return 0
    header = (
        f"{'run':40} {'state':11} {'stage':12} {'dataset':22} {'backbone':10} {'ERM':>7} {'MaskTune':>9}"
        "  verdict (val)"
    )
    print(header)
    for row in rows:
        erm, mt = row["headline"].get("erm"), row["headline"].get("masktune")
        print(
            f"{row['id']:40} {row['state']:11} {row['stage'] or '-':12} {row['dataset']:22} "
            f"{row['backbone'] or '-':10} {_pct(erm):>7} {_pct(mt):>9}  {row['verdict'] or '-'}"
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
        "verdict": (metrics.get("verdict") or {}).get("label"),
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
    verdict = metrics.get("verdict")
    if verdict:
        print(f"verdict (judged on val): {verdict['text']}")
        for note in verdict.get("notes", []):
            print(f"  note: {note}")


def show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="a run's id, or a seed study's (see list)")
    _runs_dir_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    if not (store.root / args.run_id / "config.json").is_file():  # not a run: a seed study?
        summary = studies.summarize(studies.study_runs(store, args.run_id), args.run_id)
        print(json.dumps(summary, indent=2) if args.json else "\n".join(studies.summary_lines(summary)))
        return 0
    run = store.get(args.run_id)
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
    study = report["config"].get("study")
    print(
        f"seed {report['config'].get('seed')} of study {study}" if study else "one seed: no spread over seeds"
    )
    return 0


def cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run's id (see list)")
    _runs_dir_flag(parser)
    parser.add_argument(
        "--grace",
        type=float,
        default=jobs.CANCEL_GRACE_S,
        help=f"seconds the job has to stop before it is killed (default: {jobs.CANCEL_GRACE_S:g})",
    )


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _store(args).get(args.run_id)
    jobs.cancel(run, grace_s=args.grace, wait=True)
    print(f"{run.id}: {run.status().get('state')}")
    return 0


def studio_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (default: 8501)")
    _runs_dir_flag(parser)


def studio_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for the dashboard, with the project's .streamlit/config.toml
    passed as flags: Streamlit reads that file only from its working directory, and this command may be
    started from any folder."""
    root = jobs.package_root()
    app = root / "app.py"
    if not app.is_file():
        raise MaskTuneError(f"{app}: not found; the dashboard runs from the source tree (pip install -e .)")
    config_file = root / ".streamlit" / "config.toml"
    settings = tomllib.loads(config_file.read_text()) if config_file.is_file() else {}
    flags = {
        f"{section}.{key}": value for section, values in settings.items() for key, value in values.items()
    }
    flags.update({"server.address": "127.0.0.1", "server.port": args.port})
    values = {key: str(value).lower() if isinstance(value, bool) else value for key, value in flags.items()}
    return [sys.executable, "-m", "streamlit", "run", str(app), *(f"--{k}={v}" for k, v in values.items())]


def cmd_studio(args: argparse.Namespace) -> NoReturn:
    if args.runs_dir:
        os.environ["MASKTUNE_RUNS_DIR"] = os.path.abspath(args.runs_dir)
    command = studio_command(args)
    sys.stdout.flush()
    os.execv(command[0], command)  # the server replaces this process, so Ctrl+C reaches it directly


@dataclasses.dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "run": Command("run an experiment (default: biased-digits with small-cnn)", run_arguments, cmd_run),
    "resume": Command("continue an interrupted, failed or queued run", resume_arguments, cmd_resume),
    "list": Command("list runs", list_arguments, cmd_list),
    "show": Command("print a run's config, status and metrics", show_arguments, cmd_show),
    "cancel": Command("stop a queued or running run (SIGTERM, then SIGKILL)", cancel_arguments, cmd_cancel),
    "report": Command(report_command.HELP, report_command.add_arguments, report_command.cmd_report),
    "selective": Command(selective_cli.HELP, selective_cli.add_arguments, selective_cli.run),
    "studio": Command("start the dashboard on 127.0.0.1", studio_arguments, cmd_studio),
}


def build_parser(prog: str = "masktune") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="MaskTune: ERM -> saliency masks -> finetune.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name, help=command.help, description=command.help, formatter_class=_ConfigHelp
        )
        command.arguments(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "masktune") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return COMMANDS[args.command].handler(args)
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
        # Leave torchrun's process group where run or resume joined it (other commands never import torch).
        if "masktune_core.distributed" in sys.modules:
            sys.modules["masktune_core.distributed"].shutdown()


def entry_point() -> None:
    """The ``masktune`` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(prog="python -m masktune_core"))
