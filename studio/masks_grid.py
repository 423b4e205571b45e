"""The Masks page's state, filters and figures; ``views/masks.py`` only lays them out.

A split's predictions become a ``SplitView`` once per render; the filter widgets' values are a
``Filters``; ``matching`` turns both into the sample indices shown, ``page_slice`` picks one page of
them (its number is the page's one session-state key, ``KEY_PAGE``), and ``grid_rows`` makes each row's
tiles and caption, for the page and for the exported PNG alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from studio import common, viz

KEY_PAGE = "masks_page"
PAGE_SIZES = (8, 12, 16)
MODELS = ("erm", "masktune")
OUTCOMES = {
    "all": "all samples",
    "erm_wrong_mt_right": "ERM wrong, MaskTune right",
    "erm_right_mt_wrong": "ERM right, MaskTune wrong",
    "both_wrong": "both wrong",
    "both_right": "both right",
}


def split_label(split: str) -> str:
    return f"{split} (stored masks)" if split == "train" else f"{split} (masks computed now)"


def mask_source(config: dict[str, Any], split: str) -> str:
    """One sentence on where the split's masks come from and with which settings."""
    rule = config["threshold_rule"] + (
        f" ({config['topk_percent']}%)" if config["threshold_rule"] == "topk" else ""
    )
    if config.get("mask_dilation"):
        rule += f", grown by {config['mask_dilation']} px"
    source = (
        "The training split's masks as the run stored them for the finetune"
        if split == "train"
        else f"The finetune never saw {split}; its masks are computed now with the run's settings"
    )
    text = f"{source}: {config['cam_method']} of the ERM model, threshold rule {rule}"
    text += f", shown with fill {config['fill']}."
    fills = config.get("finetune_fills") or [config["fill"]]
    if list(fills) != [config["fill"]]:
        # swap and transplant take pixels from another image of the batch, so one image alone cannot show them
        text += f" The finetune candidates used the fills {', '.join(fills)} (Results: which one was kept)."
    return text


def outcome_mask(outcome: str, erm_ok: np.ndarray, mt_ok: np.ndarray) -> np.ndarray:
    return {
        "all": np.ones_like(erm_ok),
        "erm_wrong_mt_right": ~erm_ok & mt_ok,
        "erm_right_mt_wrong": erm_ok & ~mt_ok,
        "both_wrong": ~erm_ok & ~mt_ok,
        "both_right": erm_ok & mt_ok,
    }[outcome]


@dataclass(frozen=True)
class SplitView:
    """Labels, groups and both models' predicted class, confidence and correctness on one split."""

    labels: np.ndarray
    groups: np.ndarray | None
    pred: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]

    @classmethod
    def of(cls, preds: dict[str, np.ndarray] | None) -> SplitView | None:
        """None when the predictions lack either model."""
        if preds is None or any(f"probs_{model}" not in preds for model in MODELS):
            return None
        labels = preds["label"]
        probs = {model: preds[f"probs_{model}"] for model in MODELS}
        pred = {model: p.argmax(axis=1) for model, p in probs.items()}
        return cls(
            labels=labels,
            groups=preds.get("group"),
            pred=pred,
            confidence={model: p.max(axis=1) for model, p in probs.items()},
            correct={model: pred[model] == labels for model in MODELS},
        )


@dataclass(frozen=True)
class Filters:
    """What the filter widgets chose; empty class or group lists mean all of them."""

    classes: Sequence[int] = ()
    groups: Sequence[int] = ()
    outcome: str = "all"
    erm_range: tuple[float, float] = (0.0, 1.0)
    masktune_range: tuple[float, float] = (0.0, 1.0)


def matching(view: SplitView, filters: Filters) -> np.ndarray:
    """The indices of the split's samples that pass every filter, in split order."""
    keep = outcome_mask(filters.outcome, view.correct["erm"], view.correct["masktune"])
    if filters.classes:
        keep &= np.isin(view.labels, filters.classes)
    if filters.groups and view.groups is not None:
        keep &= np.isin(view.groups, filters.groups)
    for model, (low, high) in (("erm", filters.erm_range), ("masktune", filters.masktune_range)):
        keep &= (view.confidence[model] >= low - 1e-9) & (view.confidence[model] <= high + 1e-9)
    return np.flatnonzero(keep)


def page_count(matches: int, page_size: int) -> int:
    """How many pages the matches fill; a stored page number past the end is brought back to the last."""
    pages = -(-matches // page_size)
    if st.session_state.get(KEY_PAGE, 1) > pages:
        st.session_state[KEY_PAGE] = pages
    return pages


def page_slice(matches: np.ndarray, page: int, page_size: int) -> tuple[int, np.ndarray]:
    """The index of the page's first match and the page's sample indices."""
    first = (page - 1) * page_size
    return first, matches[first : first + page_size]


def headers(method: str, split: str, show_masktune: bool) -> list[str]:
    """The image columns' titles (the labels column follows them)."""
    masked = "Masked, as finetuned" if split == "train" else "Masked (computed now)"
    titles = ["Original", f"ERM heatmap ({method})", masked]
    return [*titles, f"MaskTune heatmap ({method})"] if show_masktune else titles


def verdict(model: str, pred: int, confidence: float, correct: bool, class_names: list[str]) -> str:
    mark = ":green[✓]" if correct else ":red[✗]"
    return f"{mark} {common.MODEL_LABELS[model]}: **{viz.md_escape(class_names[pred])}** · {confidence:.1%}"


def caption_lines(
    index: int, label: int, group: str | None, preds: dict[str, tuple[int, float]], class_names: list[str]
) -> list[str]:
    """Plain caption lines for the exported PNG (the page shows the same facts in markdown)."""
    lines = [f"#{index}  true: {class_names[label]}"]
    if group is not None:
        lines.append(f"group: {group}")
    for model, (pred, confidence) in preds.items():
        mark = "right" if pred == label else "WRONG"
        lines.append(f"{common.MODEL_LABELS[model]}: {class_names[pred]} {confidence:.1%} ({mark})")
    return lines


@dataclass(frozen=True)
class Row:
    """One sample's row: its tiles, its markdown for the page and its plain caption for the PNG."""

    tiles: list[np.ndarray]
    markdown: str
    export: viz.GridRow


def grid_rows(
    view: SplitView,
    shown: np.ndarray,
    images: dict[str, np.ndarray],
    opacity: float,
    class_names: list[str],
    group_names: list[str] | None,
) -> list[Row]:
    """The rows of the samples ``shown``; ``images`` is ``inference.sample_views`` of those samples, and a
    MaskTune heatmap column appears when it holds one."""
    rows = []
    for row, index in enumerate(shown):
        original = viz.to_hwc(images["images"][row])
        tiles = [
            original,
            viz.overlay(original, images["heat_erm"][row], opacity),
            viz.to_hwc(images["masked"][row]),
        ]
        if "heat_masktune" in images:
            tiles.append(viz.overlay(original, images["heat_masktune"][row], opacity))
        label = int(view.labels[index])
        group = None
        if view.groups is not None and group_names:
            group = group_names[int(view.groups[index])]
        preds = {m: (int(view.pred[m][index]), float(view.confidence[m][index])) for m in MODELS}
        lines = [f"**#{index}** · true **{viz.md_escape(class_names[label])}**"]
        if group is not None:
            lines.append(f"group {viz.md_escape(group)}")
        lines += [verdict(m, p, c, p == label, class_names) for m, (p, c) in preds.items()]
        lines.append(f"mask: {images['masks'][row].mean():.1%} of pixels")
        export = viz.GridRow(tiles, caption_lines(int(index), label, group, preds, class_names))
        rows.append(Row(tiles, "  \n".join(lines), export))
    return rows


def grid_png(title: str, column_titles: list[str], rows: list[Row]) -> bytes:
    """The page's grid as one PNG, titled, for a slide."""
    return viz.png_bytes(viz.compose_grid(title, [*column_titles, "Labels"], [r.export for r in rows]))
