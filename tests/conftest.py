"""Shared fixtures: one tiny finished run made once per session and copied for each test that needs it.

Two suite-wide rules live here too: a test that uses the trained run is marked ``slow`` (so
``make test-fast`` leaves it out honestly), and under ``CI=true`` a skipped test fails, because a missing
chromium or missing Fashion-MNIST files must not turn the run green.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from masktune_core.config import RunConfig
from masktune_core.runs import Run, RunStore

# Every test (and every process a test starts) decodes datasets into its own cache, never the user's.
os.environ["MASKTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="masktune-test-cache-")
atexit.register(shutil.rmtree, os.environ["MASKTUNE_CACHE_DIR"], ignore_errors=True)

# Small enough to train in seconds on 2 cores, complete enough to exercise every stage and page.
TINY_RUN = {
    "dataset": "biased-digits",
    "backbone": "small-cnn",
    "epochs": 1,
    "batch_size": 64,
    "train_copies": 0,
    "randmask": True,
    # Two finetune candidates chosen on val, so the candidate and verdict paths run in every page test.
    "finetune_lrs": [0.01, 0.001],
    # Two val checks in the finetune epoch, so each candidate keeps its better one.
    "finetune_checks": 2,
    "finetune_selection": "val",
    "name": "tiny",
    "seed": 0,
}


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
TRAINS_A_RUN = "tiny_run_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINS_A_RUN in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run ({reason})"


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A finished tiny run (all stages, RandMask included). Never modify it: use ``finished_store``."""
    from masktune_core.pipeline import execute

    store = RunStore(tmp_path_factory.mktemp("template-runs"))
    run = store.create(RunConfig.from_dict(TINY_RUN).resolved().to_dict())
    status = execute(run)
    assert status["state"] == "done", status
    return run


@pytest.fixture
def finished_store(tiny_run_template: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    """A private run store holding a copy of the tiny finished run; MASKTUNE_RUNS_DIR points at it."""
    root = tmp_path / "runs"
    shutil.copytree(
        tiny_run_template.path, root / tiny_run_template.id, ignore=shutil.ignore_patterns(".lock")
    )
    monkeypatch.setenv("MASKTUNE_RUNS_DIR", str(root))
    return RunStore(root)


@pytest.fixture
def empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    root = tmp_path / "runs"
    monkeypatch.setenv("MASKTUNE_RUNS_DIR", str(root))
    return RunStore(root)


@pytest.fixture
def fresh_caches() -> None:
    """Streamlit's caches are shared by every AppTest in one process; each test has its own run store."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


class FakeProcess:
    pid = 2**22 + 1  # above Linux's largest pid: never alive, so the run reads as not running


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the job processes a page would start instead of starting them."""
    import subprocess
    import types

    from masktune_core import jobs

    commands: list[list[str]] = []

    def fake_popen(command: list[str], **kwargs: object) -> FakeProcess:
        commands.append(command)
        return FakeProcess()

    # Replace the jobs module's view of subprocess only: other code (torch's import) still spawns for real.
    fake = types.SimpleNamespace(Popen=fake_popen, STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL)
    monkeypatch.setattr(jobs, "subprocess", fake)
    return commands


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What a page's download buttons would send, by file name (AppTest cannot fetch the files)."""
    from streamlit.delta_generator import DeltaGenerator

    sent: dict[str, object] = {}
    original = DeltaGenerator.download_button

    def recording(
        self: DeltaGenerator, label: str, data: object, file_name: str | None = None, **kwargs: object
    ):
        sent[file_name or label] = data
        return original(self, label, data, file_name, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", recording)
    return sent
