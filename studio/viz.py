"""Image rendering for the pages: heatmap colours and overlays, nearest-neighbour upscaling, PNG export.

Pure numpy and Pillow (no Streamlit, no torch), so every function is testable on its own. Images are
uint8 arrays [H, W, 3] (HWC, RGB); heatmaps are float arrays [H, W] in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The pure helpers live in the engine so that the HTML report draws images the same way.
from masktune_core.imaging import (  # noqa: F401 -- re-exported for the pages
    DISPLAY_SIDE,
    jet,
    overlay,
    png_bytes,
    to_hwc,
    upscale,
    upscale_factor,
)

_MARKDOWN_SPECIALS = "\\`*_{}[]<>()#+-.!|~$:"


def md_escape(text: str) -> str:
    """``text`` shown literally inside Streamlit markdown (class and group names come from folder names)."""
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in str(text))


# ---------------------------------------------------------------------------------------- grid export
@dataclass(frozen=True)
class GridRow:
    """One row of an exported grid: equally sized RGB images and the caption lines beside them."""

    images: Sequence[np.ndarray]
    captions: Sequence[str]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def compose_grid(
    title: str,
    headers: Sequence[str],
    rows: Sequence[GridRow],
    *,
    cell: int = 160,
    caption_width: int = 300,
) -> Image.Image:
    """One image for a slide: a title, a header row naming the columns, then one row per sample with its
    images (scaled to ``cell`` px, nearest-neighbour) and its caption lines to the right. Text is wrapped
    to its column; the built-in font covers Latin text, so pass plain ASCII dashes."""
    if not rows:
        raise ValueError("compose_grid needs at least one row")
    columns = len(rows[0].images)
    if len(headers) != columns + 1:
        raise ValueError(f"{columns} image columns need {columns + 1} headers (the last names the captions)")
    pad, line_h = 10, 18
    title_font, header_font, text_font = _font(20), _font(15), _font(14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [cell] * columns + [caption_width]
    header_lines = [_wrap(measure, h, header_font, w) for h, w in zip(headers, widths, strict=True)]
    caption_lines = [
        [ln for c in r.captions for ln in _wrap(measure, c, text_font, caption_width)] for r in rows
    ]
    title_h = 34
    header_h = line_h * max(len(lines) for lines in header_lines) + pad
    row_heights = [max(cell, line_h * len(lines)) + pad for lines in caption_lines]
    width = pad + columns * (cell + pad) + caption_width + pad
    height = pad + title_h + header_h + sum(row_heights) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="#1F2333", font=title_font)
    y = pad + title_h
    for i, lines in enumerate(header_lines):
        for j, line in enumerate(lines):
            draw.text((pad + i * (cell + pad), y + j * line_h), line, fill="#475569", font=header_font)
    y += header_h
    for row, lines, row_h in zip(rows, caption_lines, row_heights, strict=True):
        if len(row.images) != columns:
            raise ValueError(f"every row needs {columns} images, got {len(row.images)}")
        for i, image in enumerate(row.images):
            tile = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (pad + i * (cell + pad), y))
        x = pad + columns * (cell + pad)
        for j, line in enumerate(lines):
            draw.text((x, y + j * line_h), line, fill="#1F2333", font=text_font)
        y += row_h
    return canvas
