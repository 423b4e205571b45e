"""Real-browser checks of what AppTest cannot do: clicking a plotly curve, and images in the masks grid.

A Streamlit server runs on a free port over a private copy of the tiny finished run; Debian's chromium
drives it through Playwright. Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from masktune_core.runs import Run

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
WAIT_MS = 180_000  # a first page load imports torch and builds the dataset on a shared 2-core machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run_template: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, run id) of a dashboard serving a private copy of the tiny finished run."""
    runs = tmp_path_factory.mktemp("browser-runs")
    shutil.copytree(
        tiny_run_template.path, runs / tiny_run_template.id, ignore=shutil.ignore_patterns(".lock")
    )
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = open(runs / "server.log", "w")  # noqa: SIM115 -- stays open while the server writes to it
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "MASKTUNE_RUNS_DIR": str(runs)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not start; see {runs / 'server.log'}")
            time.sleep(0.5)
        yield base, tiny_run_template.id
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1300})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), timeout=WAIT_MS)


# Pixel positions of the test curve's points on the risk-coverage chart, from plotly's own axes
# (gd._fullData holds the decoded arrays; plotly 7 sends them base64-encoded), and the point farthest from
# its neighbours, so a click lands on it rather than on the next one.
POINTS_JS = """() => {
  const gd = document.querySelectorAll('.js-plotly-plot')[0];
  const trace = gd._fullData.find(t => t.type === 'scattergl' && !t.name.startsWith('val'));
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, size = gd._fullLayout._size;
  const box = gd.getBoundingClientRect();
  const points = Array.from(trace.x, (x, i) => ({
    x: box.left + size.l + xa.l2p(x), y: box.top + size.t + ya.l2p(trace.y[i]),
    threshold: trace.customdata[i], coverage: x}));
  let best = 1, gap = -1;
  for (let i = 1; i < points.length - 1; i++) {
    const d = Math.min(...[points[i - 1], points[i + 1]].map(
      p => Math.hypot(p.x - points[i].x, p.y - points[i].y)));
    if (d > gap && points[i].threshold !== 0.5) { gap = d; best = i; }
  }
  return {points: points, target: best};
}"""


def slider_value(page) -> str:
    text = page.locator('[data-testid="stSlider"]').filter(has_text="Global threshold t").inner_text()
    return text.split()[3]  # "Global threshold t <value> <min> <max>"


def test_clicking_the_risk_coverage_curve_sets_the_threshold(server: tuple[str, str], page) -> None:
    base, run_id = server
    page.goto(f"{base}/selective?run={run_id}")
    page.get_by_text("Trade-offs").wait_for()
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(g => g._fullData).length >= 4"
    )
    assert slider_value(page) == "0.500"
    coverage = page.locator('[data-testid="stMetric"]').filter(has_text="Coverage")
    before = coverage.all_inner_texts()

    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    curve = page.evaluate(POINTS_JS)
    target = curve["points"][curve["target"]]
    page.mouse.move(target["x"], target["y"])
    page.mouse.click(target["x"], target["y"])
    page.get_by_text("from the curve").wait_for()
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="stSlider"]'))
             .some(s => s.innerText.includes('Global threshold t') && !s.innerText.includes('0.500'))"""
    )

    # The slider shows the clicked point's threshold, and the test coverage is that point's coverage
    # exactly (several points can round to the same slider value; the clicked one is among them).
    shown = slider_value(page)
    clicked = [p for p in curve["points"] if f"{p['threshold']:.3f}" == shown]
    assert clicked, f"no curve point has threshold {shown}"
    test_coverage = coverage.all_inner_texts()[1].split()[1]
    assert test_coverage in {f"{100 * p['coverage']:.1f}%" for p in clicked}
    assert coverage.all_inner_texts() != before
    screenshot(page, "selective-after-click.png")


def test_masks_grid_shows_images(server: tuple[str, str], page) -> None:
    base, run_id = server
    page.goto(f"{base}/masks?run={run_id}&split=val")
    page.get_by_text("Showing").first.wait_for()
    # 8 rows x (original, ERM heatmap, masked), every one decoded by the browser
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
                 .filter(img => img.complete && img.naturalWidth > 0).length >= 24"""
    )
    assert "in val" in page.get_by_text("Showing").first.inner_text()
    screenshot(page, "masks-grid.png")
