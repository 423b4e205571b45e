"""The report's mask gallery: a few chosen examples, each with both heatmaps, the mask and both predictions.

``sample_views`` is the engine's one recipe for "what the models looked at" on given images (the Masks
page calls it too): heatmaps from ``cam.compute_heatmaps``, the mask stored for the finetune on the
training split or ``masking.run_masks`` of the ERM heatmap elsewhere, and ``masking.apply_masks``
with the run's fill.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from masktune_core.imaging import overlay, png_bytes, to_hwc, upscale, upscale_factor

PER_CATEGORY = 4
MIN_EXAMPLES = 12
TILE_SIDE = 96  # px per tile in the gallery PNGs: legible on A4, small enough for the 5 MB budget
GAP = 4
HEATMAP_OPACITY = 0.5
CATEGORIES = {
    "fixed": "ERM was wrong, MaskTune right",
    "shortcut": "The ERM shortcut at work: confident ERM errors on its worst group",
    "still_wrong": "Where MaskTune is still wrong",
    "training": "Training images with the masks the finetune saw, one per group",
    "both_right": "Both models right",
}


def sample_views(
    models: dict[str, Any],
    images: Any,
    config: dict[str, Any],
    mean: Sequence[float],
    stored_masks: Any | None = None,
    heat_models: Sequence[str] = ("erm",),
    batch: int = 64,
) -> dict[str, np.ndarray]:
    """``images`` uint8 [B, C, H, W] (a tensor) -> ``images``, ``heat_<model>`` for ``heat_models``,
    ``masks`` bool [B, H, W] and ``masked`` uint8 [B, C, H, W].

    ``stored_masks`` are the masks of these very images from the run (the training split); without them
    the masks are made now from the ERM heatmaps with the run's threshold rule.
    """
    import torch

    from masktune_core.cam import compute_heatmaps
    from masktune_core.masking import apply_masks, run_masks

    names = list(dict.fromkeys(["erm", *heat_models]))
    heat: dict[str, list[Any]] = {name: [] for name in names}
    for start in range(0, len(images), batch):
        x = images[start : start + batch].float() / 255
        for name in names:
            heat[name].append(compute_heatmaps(models[name], x, method=config["cam_method"]))
    maps = {n: torch.cat(m) if m else torch.zeros((0, *images.shape[-2:])) for n, m in heat.items()}
    masks = run_masks(maps["erm"], config) if stored_masks is None else stored_masks
    out = {
        "images": images.numpy(),
        "masks": masks.numpy(),
        "masked": apply_masks(images, masks, fill=config["fill"], mean=mean).numpy(),
    }
    for name in heat_models:
        out[f"heat_{name}"] = maps[name].numpy()
    return out


# ---------------------------------------------------------------------- choosing examples
def _top(candidates: np.ndarray, confidence: np.ndarray, taken: set[int], count: int) -> list[int]:
    order = candidates[np.argsort(-confidence[candidates], kind="stable")]
    return [int(i) for i in order if int(i) not in taken][:count]


def choose_test_examples(pred: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """(category, index) on a test split, from its saved predictions: the story first, then fill-ins."""
    label = pred["label"]
    erm, mt = pred["probs_erm"], pred["probs_masktune"]
    erm_ok, mt_ok = erm.argmax(1) == label, mt.argmax(1) == label
    erm_conf, mt_conf = erm.max(1), mt.max(1)
    chosen: list[tuple[str, int]] = []
    taken: set[int] = set()

    def add(category: str, indices: list[int]) -> None:
        chosen.extend((category, i) for i in indices)
        taken.update(indices)

    add("fixed", _top(np.flatnonzero(~erm_ok & mt_ok), mt_conf, taken, PER_CATEGORY))
    groups = pred.get("group")
    if groups is not None:
        errors = [(float(erm_ok[groups == g].mean()), int(g)) for g in np.unique(groups)]
        worst = min(errors)[1]
        add("shortcut", _top(np.flatnonzero(~erm_ok & (groups == worst)), erm_conf, taken, PER_CATEGORY))
    else:
        add("shortcut", _top(np.flatnonzero(~erm_ok), erm_conf, taken, PER_CATEGORY))
    add("still_wrong", _top(np.flatnonzero(~mt_ok), mt_conf, taken, PER_CATEGORY))
    return chosen


def choose_training_examples(labels: np.ndarray, groups: np.ndarray | None, seed: int) -> list[int]:
    """One training image per group (per class without groups), the same for the same seed."""
    keys = groups if groups is not None else labels
    rng = np.random.default_rng(seed)
    return [int(rng.choice(np.flatnonzero(keys == k))) for k in np.unique(keys)]


def fill_up(pred: dict[str, np.ndarray], chosen: list[tuple[str, int]], total: int) -> list[tuple[str, int]]:
    """Add examples both models got right until ``total`` examples are shown (a strong model errs rarely)."""
    need = total - len(chosen)
    if need <= 0:
        return chosen
    ok = (pred["probs_erm"].argmax(1) == pred["label"]) & (pred["probs_masktune"].argmax(1) == pred["label"])
    taken = {i for _, i in chosen}
    extra = [int(i) for i in np.flatnonzero(ok) if int(i) not in taken]
    step = max(1, len(extra) // max(need, 1))
    return chosen + [("both_right", i) for i in extra[::step][:need]]


# ---------------------------------------------------------------------- drawing
def strip_png(views: dict[str, np.ndarray], row: int, has_masktune: bool) -> bytes:
    """Original | ERM heatmap | masked image | MaskTune heatmap, side by side, as one PNG."""
    original = to_hwc(views["images"][row])
    tiles = [
        original,
        overlay(original, views["heat_erm"][row], HEATMAP_OPACITY),
        to_hwc(views["masked"][row]),
    ]
    if has_masktune:
        tiles.append(overlay(original, views["heat_masktune"][row], HEATMAP_OPACITY))
    factor = upscale_factor(original.shape[0], TILE_SIDE)
    big = [upscale(t, factor) for t in tiles]
    side = big[0].shape[0]
    gap = np.full((side, GAP, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for tile in big:
        parts.extend([tile, gap])
    return png_bytes(np.concatenate(parts[:-1], axis=1))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def mask_area_by_group(masks: Any, groups: np.ndarray | None, names: list[str]) -> dict[str, float]:
    """Mean fraction of each image's pixels the stored masks hide, per training group (or overall).
    ``masks`` is a ``masking.PackedMasks``: the pixels are counted on the packed bits."""
    _, height, width = masks.shape
    area = (masks.areas().double() / (height * width)).numpy()
    if groups is None:
        return {"all training images": float(area.mean())}
    return {names[int(g)]: float(area[groups == g].mean()) for g in np.unique(groups)}
