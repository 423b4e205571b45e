"""A report you can send: one run or one seed study as a single HTML file that opens offline, plus JSON.

``python -m masktune_core report RUN_ID|STUDY_ID [...] [--out FILE.html]`` writes FILE.html and, beside it,
FILE.json with the same content (without the images).

Charts are inline SVG drawn by ``report.svg``, not plotly. Embedding plotly.js would add about 3.5 MB to
every file, most of the 5 MB budget, for interactivity a printed or emailed report does not use; an SVG
chart is a few kilobytes, opens offline in any browser or mail client, and prints sharply on A4. Images
are PNG data URIs. Nothing in the page refers to a network address or a server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masktune_core.errors import ConfigError
from masktune_core.runs import Run, RunStore, atomic_path

__all__ = ["Report", "build_report", "check_out_path"]


@dataclass
class Report:
    """The report's content (``content``, JSON-ready) and its HTML rendering."""

    content: dict[str, Any]

    def html(self) -> str:
        from masktune_core.report.html import render

        return render(self.content)

    def json(self) -> str:
        """The content without the embedded images (they are in the HTML)."""
        content = dict(self.content)
        if content.get("gallery"):
            examples = [{k: v for k, v in e.items() if k != "image"} for e in content["gallery"]["examples"]]
            content["gallery"] = {**content["gallery"], "examples": examples}
        return json.dumps(content, indent=2, allow_nan=False)

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out`` (HTML) and ``out`` with suffix .json, each atomically; returns both paths."""
        html_path = check_out_path(out)
        json_path = html_path.with_suffix(".json")
        text, data = self.html(), self.json()
        with atomic_path(json_path) as tmp:
            tmp.write_text(data)
        with atomic_path(html_path) as tmp:
            tmp.write_text(text)
        return html_path, json_path


def check_out_path(out: str | Path) -> Path:
    """The output path, or ConfigError naming ``out`` when its folder is missing or it is not .html."""
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ConfigError("out", f"{path} must end in .html")
    if not path.parent.is_dir():
        raise ConfigError("out", f"folder {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError("out", f"{path} is a folder")
    return path


def build_report(store: RunStore, ids: Sequence[str]) -> Report:
    """A report of the runs named by ``ids`` (run ids or one study id); ConfigError or RunStoreError
    for an unknown id or runs that are not one configuration over seeds."""
    from masktune_core import studies
    from masktune_core.report.build import collect

    runs: list[Run] = studies.resolve(store, ids)
    studies.check_one_setup(runs)
    study = ids[0] if len(ids) == 1 and len(runs) > 1 else None
    return Report(collect(runs, study))
