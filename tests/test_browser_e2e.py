"""End to end in a real browser: launch a tiny run, reload mid-run, wait for it, then visit every page.

Needs Playwright and Debian's /usr/bin/chromium; trains a real run (about a minute on two cores).
Screenshots of every page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
RUN_TIMEOUT_S = 240  # the tiny run takes about a minute on two idle cores; allow for a busy machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-runs")


@contextlib.contextmanager
def serve_app(runs_dir: Path, log_path: Path) -> Iterator[str]:
    """A Streamlit server of app.py on a free port over ``runs_dir``, stopped (SIGTERM, SIGKILL) after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MASKTUNE_RUNS_DIR": str(runs_dir)}
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none",  # nothing to watch in a test, and .venv would flood inotify
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, process)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def server(runs_dir: Path) -> Iterator[str]:
    try:
        with serve_app(runs_dir, runs_dir.parent / "streamlit.log") as url:
            yield url
    finally:
        stop_jobs(runs_dir)


def stop_jobs(runs_dir: Path) -> None:
    """Cancel any job the test left running (a failed assertion mid-run), so no trainer outlives it."""
    from masktune_core import jobs
    from masktune_core.runs import ACTIVE_STATES, RunStore

    for run in RunStore(runs_dir).list():
        if run.status().get("state") in ACTIVE_STATES:
            jobs.cancel(run)


@pytest.fixture(scope="module")
def page(server: str):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(720, 500)
    page.mouse.wheel(0, -20_000)  # the app scrolls inside its main pane: back to the top for the shot
    page.wait_for_timeout(500)  # let charts finish their transition
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def body(page) -> str:
    return page.locator("section.main, [data-testid='stMain']").first.inner_text()


def wait_for_text(page, text: str | re.Pattern, timeout_s: float = 60) -> None:
    page.get_by_text(text).first.wait_for(state="visible", timeout=timeout_s * 1000)


def run_id_from(url: str) -> str:
    match = re.search(r"[?&]run=([^&]+)", url)
    assert match, f"no ?run= in {url}"
    return match.group(1)


def test_launch_watch_reload_and_open_every_page(server: str, page, runs_dir: Path) -> None:
    from masktune_core.runs import RunStore

    # --- the empty store: every page says what to do first
    page.goto(server)
    wait_for_text(page, "No runs yet")
    assert re.search(r"/runs\b", page.url), page.url  # the root forwards to the Runs page's own address
    shoot(page, "runs-empty")

    # --- launch a tiny run from the form
    page.goto(f"{server}/launch")
    wait_for_text(page, "Launch an experiment")
    wait_for_text(page, "Data available")
    page.get_by_role("textbox", name="Run name").fill("e2e")
    epochs = page.get_by_role("spinbutton", name="ERM epochs")
    epochs.fill("1")
    epochs.press("Tab")
    page.get_by_text("Advanced").click()
    copies = page.get_by_role("spinbutton", name="Training copies per image")
    copies.fill("0")
    copies.press("Tab")
    shoot(page, "launch-form")
    page.get_by_role("button", name="Launch").click()

    # --- progress appears, in the URL and on the page
    page.wait_for_url(re.compile(r"[?&]run="), timeout=30_000)
    run_id = run_id_from(page.url)
    assert run_id.endswith("-e2e")
    page.locator("[data-testid='stProgress']").first.wait_for(state="visible", timeout=90_000)
    text = body(page)
    assert "e2e" in text
    shoot(page, "launch-running")

    # --- a refresh is a new session: the ?run= parameter re-attaches to the same job's progress
    page.reload()
    wait_for_text(page, "Launch an experiment")
    run = RunStore(runs_dir).get(run_id)
    if run.status()["state"] in ("queued", "running"):
        page.locator("[data-testid='stProgress']").first.wait_for(state="visible", timeout=30_000)
        assert run.status()["state"] in ("queued", "running", "done"), "reload must not disturb the job"
    assert run_id_from(page.url) == run_id
    wait_for_text(page, run_id)  # the job panel's "Run ID" line: the same job, not just any job
    shoot(page, "launch-after-reload")

    # --- the fragment keeps polling until the job is done, then offers the results
    wait_for_text(page, re.compile(r"Done in"), timeout_s=RUN_TIMEOUT_S)
    assert run.status()["state"] == "done", run.status()
    shoot(page, "launch-done")
    # While a rerun is drawn on a busy machine the finished panel can show twice, the stale copy beside
    # the fresh one; every copy must open this run's results.
    links = page.get_by_role("link", name="Open results")
    hrefs = {links.nth(i).get_attribute("href") for i in range(links.count())}
    assert hrefs == {f"results?run={run_id}"}, hrefs
    links.first.click()
    page.wait_for_url(re.compile(r"/results\?run="))
    metrics = run.metrics()
    split = metrics["main_test_split"]
    masktune = metrics["splits"][split]["masktune"]["accuracy"]
    wait_for_text(page, f"MaskTune accuracy · {split}")
    # The verdict on val comes first, with the label metrics.json holds.
    wait_for_text(page, f"Verdict (judged on val): {metrics['verdict']['label']}")
    values = page.locator("[data-testid='stMetricValue']").all_inner_texts()
    assert f"{100 * masktune:.1f}%" in values, values
    page.locator(".js-plotly-plot:visible").nth(2).wait_for(
        state="visible"
    )  # per-class bars, loss, val accuracy
    shoot(page, "results")

    # --- the Runs page selects it from the link and offers its analysis pages
    page.goto(f"{server}/runs?run={run_id}")
    page.get_by_role("heading", name="e2e").wait_for(state="visible")
    page.locator("[data-testid='stDataFrame']").first.wait_for(state="visible")
    page.get_by_role("link", name="Masks").last.wait_for(state="visible")
    shoot(page, "runs")

    # --- the analysis pages open on this run with real content
    for path, heading, shot in (
        ("masks", "Masks", "masks"),
        ("selective", "Selective classification", "selective"),
    ):
        page.goto(f"{server}/{path}?run={run_id}")
        page.get_by_role("heading", name=heading).first.wait_for(state="visible", timeout=90_000)
        content = page.locator("[data-testid='stMain'] img, [data-testid='stMain'] .js-plotly-plot")
        content.first.wait_for(state="visible", timeout=120_000)
        shoot(page, shot)
    page.goto(f"{server}/try?run={run_id}")
    page.get_by_role("heading", name="Try an image").first.wait_for(state="visible", timeout=90_000)
    shoot(page, "try")
