"""The shortcut cues: each turns grey objects on black [N, H, W] (0..1) into RGB uint8 [N, H, W, 3].

``cues`` holds 0 or 1 per image. Every renderer jitters its cue a little per image (seeded ``rng``), so the
cue is a visual feature to learn, not one identical pixel pattern.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Renderer = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

# px; the digits' box leaves a 4 px black margin at 32 px, so the patch seldom covers a stroke (only where an
# affine copy shifted the digit, by up to 2 px, into the corner)
PATCH_SIZE = 4
PATCH_COLOR = np.array([1.0, 0.15, 0.1], dtype=np.float32)
WARM_TINT = np.array([1.0, 0.55, 0.15], dtype=np.float32)
COOL_TINT = np.array([0.15, 0.55, 1.0], dtype=np.float32)
TINT_STRENGTH = (0.25, 0.4)  # share of every pixel replaced by the tint colour
LAND = (np.array([0.45, 0.35, 0.15], dtype=np.float32), np.array([0.25, 0.45, 0.15], dtype=np.float32))
WATER = (np.array([0.1, 0.25, 0.55], dtype=np.float32), np.array([0.2, 0.5, 0.75], dtype=np.float32))
OBJECT_OPACITY = 4.0  # alpha = min(1, 4 * grey): a garment's darker inside still hides the background
MARK_COLORS = (np.array([1.0, 0.6, 0.2], dtype=np.float32), np.array([0.3, 0.75, 1.0], dtype=np.float32))
MARK_SIZE = 5  # px at 32 px, odd so the mark has a centre pixel
MARK_ON_OBJECT = 0.3  # grey level above which a pixel belongs to the object


def _grey_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images[..., None], 3, axis=-1)


def _jitter(colour: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.08) -> np.ndarray:
    return np.clip(colour[None, :] + rng.uniform(-spread, spread, size=(n, 3)), 0, 1).astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def corner_patch(images: np.ndarray, cues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cue 1: a small red square in the top-left corner; cue 0: no square."""
    out = _grey_rgb(images)
    marked = np.flatnonzero(cues == 1)
    out[marked, :PATCH_SIZE, :PATCH_SIZE, :] = _jitter(PATCH_COLOR, len(marked), rng)[:, None, None, :]
    return to_uint8(out)


def colour_tint(images: np.ndarray, cues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cue 0: a warm cast over the whole image, background included; cue 1: a cool one."""
    n = len(images)
    tints = np.where(cues[:, None] == 1, _jitter(COOL_TINT, n, rng), _jitter(WARM_TINT, n, rng))
    strength = rng.uniform(*TINT_STRENGTH, size=(n, 1, 1, 1)).astype(np.float32)
    return to_uint8(_grey_rgb(images) * (1 - strength) + strength * tints[:, None, None, :])


def _texture(n: int, size: int, water: bool, rng: np.random.Generator) -> np.ndarray:
    """Land: diagonal stripes in two earth tones. Water: horizontal waves in two blues. Random phase."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    if water:
        weight = 0.5 + 0.5 * np.sin(y[None] * 0.9 + 1.5 * np.sin(x[None] * 0.35 + phase) + phase)
        dark, light = WATER
    else:
        weight = (np.sin((x + y)[None] * 0.7 + phase) > 0).astype(np.float32)
        dark, light = LAND
    colours = dark + weight[..., None] * (light - dark)
    return colours + rng.uniform(-0.05, 0.05, size=(n, 1, 1, 3)).astype(np.float32)


def background(images: np.ndarray, cues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cue 0: a land texture behind the object; cue 1: a water texture. The object itself is unchanged."""
    n, size = len(images), images.shape[-1]
    scene = np.where(
        (cues == 1)[:, None, None, None], _texture(n, size, True, rng), _texture(n, size, False, rng)
    )
    alpha = np.clip(images * OBJECT_OPACITY, 0, 1)[..., None]
    return to_uint8(alpha * _grey_rgb(images) + (1 - alpha) * scene)


def object_colour(images: np.ndarray, cues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The object's own pixels are coloured: cue 0 orange, cue 1 light blue; the background stays black.
    No mask can hide this cue without hiding the object."""
    n = len(images)
    colours = np.where(cues[:, None] == 1, _jitter(MARK_COLORS[1], n, rng), _jitter(MARK_COLORS[0], n, rng))
    return to_uint8(images[..., None] * colours[:, None, None, :])


def object_mark(images: np.ndarray, cues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small coloured mark printed on the object itself, like a logo on a garment, at a random spot
    inside the object: cue 0 an orange mark, cue 1 a light-blue one. It overlaps the object, so masking
    it also hides part of the object."""
    out = _grey_rgb(images)
    n, size = len(images), images.shape[-1]
    colours = np.where(cues[:, None] == 1, _jitter(MARK_COLORS[1], n, rng), _jitter(MARK_COLORS[0], n, rng))
    half = MARK_SIZE // 2
    for i in range(n):
        # The mark's centre is a pixel of the object, away from the border so the whole mark fits.
        inside = np.argwhere(images[i, half : size - half, half : size - half] > MARK_ON_OBJECT) + half
        y, x = inside[rng.integers(len(inside))] if len(inside) else (size // 2, size // 2)
        out[i, y - half : y + half + 1, x - half : x + half + 1, :] = colours[i]
    return to_uint8(out)


RENDERERS: dict[str, Renderer] = {
    "corner-patch": corner_patch,
    "colour-tint": colour_tint,
    "background": background,
    "object-colour": object_colour,
    "object-mark": object_mark,
}
