"""Image helpers shared by the dashboard and the HTML report: heatmap colours, overlays, upscaling, PNG.

Pure numpy and Pillow. Images are uint8 arrays [H, W, 3] (HWC, RGB); heatmaps are float arrays [H, W]
in [0, 1].
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
