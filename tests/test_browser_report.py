"""In Debian's chromium: the HTML report opens offline and prints to A4; the Results study view draws one
point per seed.

Needs Playwright and /usr/bin/chromium.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from masktune_core.__main__ import main
from masktune_core.runs import Run, RunStore
from tests.test_app_studies import MASKTUNE_WGA, STUDY, make_study
from tests.test_browser_e2e import CHROMIUM, serve_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
WAIT_MS = 180_000  # a first page load imports torch on a shared 2-core machine


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def report_file(finished_store: RunStore, tmp_path: Path) -> tuple[Path, Run]:
    run = finished_store.list()[0]
    out = tmp_path / "report.html"
    assert main(["report", run.id, "--runs-dir", str(finished_store.root), "--out", str(out)]) == 0
    return out, run


def test_report_opens_offline_with_every_image_and_the_run_s_numbers(browser, report_file) -> None:
    out, run = report_file
    context = browser.new_context()
    requests, failed, errors = [], [], []
    # Every request but the report file itself is aborted, so anything the page fetches shows as failed.
    context.route(
        "**/*", lambda route: route.continue_() if route.request.url == out.as_uri() else route.abort()
    )
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(out.as_uri(), wait_until="load")
    assert failed == [] and errors == []
    assert [u for u in requests if not u.startswith("data:")] == [out.as_uri()]
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 12 and min(widths) > 0

    metrics = run.metrics()
    cells = page.eval_on_selector_all(
        "td[data-key]", "tds => tds.map(td => [td.dataset.key, td.dataset.value, td.textContent])"
    )
    assert len(cells) == 6  # accuracy and worst-group accuracy: ERM, MaskTune and their difference
    for key, value, text in cells:
        split, model, metric = key.split(".")
        models = metrics["splits"][split]
        if model == "difference":
            expected = models["masktune"][metric] - models["erm"][metric]
            assert float(value) == pytest.approx(expected) and text == f"{100 * expected:+.1f} pp"
        else:
            assert float(value) == models[model][metric] and text == f"{100 * models[model][metric]:.1f} %"
    context.close()


def test_report_prints_to_more_than_one_a4_page(browser, report_file, tmp_path: Path) -> None:
    out, _ = report_file
    page = browser.new_page()
    page.goto(out.as_uri(), wait_until="load")
    pdf = tmp_path / "report.pdf"
    page.pdf(path=str(pdf), format="A4", print_background=True)
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", pdf.read_bytes()))
    assert pages > 1
    page.close()


@pytest.fixture
def study_server(finished_store: RunStore) -> Iterator[str]:
    make_study(finished_store, finished_store.list()[0])
    try:
        with serve_app(finished_store.root, finished_store.root.parent / "streamlit.log") as url:
            yield url
    finally:
        shutil.rmtree(finished_store.root / ".streamlit", ignore_errors=True)


def test_results_study_view_draws_one_point_per_seed(browser, study_server: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{study_server}/results?study={STUDY}")
    page.get_by_text(f"Seed study {STUDY}").wait_for()
    page.get_by_text("Worst-group accuracy on test_biased").first.wait_for()
    traces = page.evaluate(
        """() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(gd =>
            gd._fullData.map(t => ({chart: gd.layout.title.text, name: t.name, y: Array.from(t.y)})))"""
    )
    points = [
        t["y"]
        for t in traces
        if "Worst-group accuracy on test_biased" in t["chart"]
        and t["name"] == "MaskTune (one point per seed)"
    ]
    assert len(points) == 1 and json.dumps(sorted(points[0])) == json.dumps(sorted(MASKTUNE_WGA))
    assert page.get_by_text("60.0 ± 10.0 %").count() >= 1
    assert errors == []
    page.close()
