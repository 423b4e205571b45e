"""Open a dashboard page through the router in AppTest, as a browser would."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from studio.common import PAGES

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def open_page(page: str, **query: str) -> AppTest:
    """Render ``page`` (a key of ``studio.common.PAGES``) with ``query`` as its URL query parameters."""
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()  # a first run registers the st.navigation pages, so switch_page finds them by url path
    at.switch_page(PAGES[page])
    at.run()
    assert not at.exception, at.exception
    return at


def render_page_script(page: str, **query: str) -> AppTest:
    """Render ``page``'s script alone (no router), for pages that need nothing app.py sets up."""
    # The first run imports torch and builds the dataset: a busy 2-core machine needs the long timeout.
    at = AppTest.from_file(str(Path(APP).parent / PAGES[page]), default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()
