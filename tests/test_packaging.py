"""The package as a maintainer meets it: the `masktune` console script, its subcommands, and --help
as the reference card (every option with one line of help, its default and its choices)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest

from masktune_core import __main__ as cli
from masktune_core import jobs
from masktune_core.config import RunConfig, option_choices, option_help
from masktune_core.data import dataset_names
from masktune_core.runs import RunStore

REPO = Path(__file__).resolve().parents[1]


def help_text(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare words


def test_every_field_has_help_with_its_default() -> None:
    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help"), f"RunConfig.{f.name} has no help"
        assert "(default: " in option_help(f.name), f.name


def test_help_lists_the_registries_and_the_choice_lists() -> None:
    assert set(dataset_names()) <= set(option_choices("dataset"))
    for name in ("dataset", "backbone", "cam_method", "threshold_rule", "fill"):
        text = option_help(name)
        assert all(choice in text for choice in option_choices(name)), name
    assert "dataset recipe" in option_help("epochs")


def test_the_console_script_is_declared_and_exists() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    module, _, function = pyproject["project"]["scripts"]["masktune"].partition(":")
    assert module == "masktune_core.__main__" and callable(getattr(cli, function))


def test_the_subcommands() -> None:
    assert {"run", "resume", "list", "show", "cancel", "studio"} <= set(cli.COMMANDS)


def test_run_help_documents_every_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text("run", capsys=capsys)
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"{flag}( [A-Z_]+)? {re.escape(f.metadata['help'])} \(default: ", text), flag
        for choice in option_choices(f.name) or ():
            assert choice in text, (flag, choice)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_of_every_subcommand_has_help_with_its_default(command: str) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert text, (command, action.dest)
        if action.option_strings:
            assert "(default: " in text, (command, action.dest, text)


def test_studio_serves_the_app_beside_the_package_on_localhost() -> None:
    command = cli.studio_command(argparse.Namespace(port=8765, runs_dir=None))
    assert command[1:4] == ["-m", "streamlit", "run"] and Path(command[4]) == REPO / "app.py"
    assert "--server.address=127.0.0.1" in command and "--server.port=8765" in command
    # The project's Streamlit settings travel as flags, so they hold whatever folder it starts from.
    assert "--server.maxUploadSize=10" in command


def test_a_job_imports_the_launchers_package_whatever_the_working_directory(
    empty_store: RunStore, spawned: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The job process gets this package's root first on PYTHONPATH and no working directory on
    sys.path (``-P``), so a folder named like the package where the server was started cannot win.
    The end-to-end version: test_reliability_jobs.py::test_a_job_launched_from_another_folder_runs_to_done."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    jobs.submit(empty_store, RunConfig.from_dict({"train_copies": 0, "epochs": 1}))
    assert spawned[0][1:4] == ["-P", "-m", "masktune_core"]
    assert jobs.job_environment()["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
