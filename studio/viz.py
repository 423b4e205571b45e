"""Image rendering for the pages: heatmap colours and overlays, nearest-neighbour upscaling, PNG export.

Pure numpy and Pillow (no Streamlit, no torch), so every function is testable on its own. Images are
uint8 arrays [H, W, 3] (HWC, RGB); heatmaps are float arrays [H, W] in [0, 1].
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Shown images are upscaled to about this many pixels per side, so 28 px digits stay legible.
DISPLAY_SIDE = 140


def to_hwc(image: np.ndarray) -> np.ndarray:
    """uint8 [C, H, W] (C = 1 or 3) as RGB [H, W, 3]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [C, H, W] with 1 or 3 channels, got shape {image.shape}")
    hwc = np.transpose(image, (1, 2, 0))
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else np.ascontiguousarray(hwc)


def jet(heat: np.ndarray) -> np.ndarray:
    """The classic jet colormap (blue -> cyan -> yellow -> red) of heat [H, W] in [0, 1], as RGB uint8."""
    x = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peak at x = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """The heatmap's jet colours blended over an RGB image: ``opacity`` 0 shows the image only, 1 the map."""
    if image.shape[:2] != heat.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {heat.shape} differ in size")
    alpha = float(np.clip(opacity, 0.0, 1.0))
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * jet(heat).astype(np.float32)
    return (blended + 0.5).astype(np.uint8)


def upscale_factor(side: int, target: int = DISPLAY_SIDE) -> int:
    """The whole factor that brings an image of ``side`` pixels closest to ``target`` (at least 1)."""
    return max(1, round(target / max(side, 1)))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor: every pixel becomes a crisp factor x factor block."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


_MARKDOWN_SPECIALS = "\\`*_{}[]<>()#+-.!|~$:"


def md_escape(text: str) -> str:
    """``text`` shown literally inside Streamlit markdown (class and group names come from folder names)."""
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in str(text))


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


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
