"""Masks: what the ERM model found most salient, what the finetune hid, and what each model predicted."""

from __future__ import annotations

import numpy as np
import streamlit as st

from masktune_core.runs import Run
from studio import common, inference, viz

PAGE_SIZES = (8, 12, 16)
OUTCOMES = {
    "all": "all samples",
    "erm_wrong_mt_right": "ERM wrong, MaskTune right",
    "erm_right_mt_wrong": "ERM right, MaskTune wrong",
    "both_wrong": "both wrong",
    "both_right": "both right",
}


def split_label(split: str) -> str:
    return f"{split} (stored masks)" if split == "train" else f"{split} (masks computed now)"


def outcome_mask(outcome: str, erm_ok: np.ndarray, mt_ok: np.ndarray) -> np.ndarray:
    return {
        "all": np.ones_like(erm_ok),
        "erm_wrong_mt_right": ~erm_ok & mt_ok,
        "erm_right_mt_wrong": erm_ok & ~mt_ok,
        "both_wrong": ~erm_ok & ~mt_ok,
        "both_right": erm_ok & mt_ok,
    }[outcome]


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


def render(run: Run) -> None:
    summary = common.dataset_summary(run)
    config = run.config()
    class_names: list[str] = summary["class_names"]
    group_names: list[str] | None = summary.get("group_names")
    splits = ["train", *summary["eval_splits"]]
    wanted = st.query_params.get("split")

    top = st.columns([2, 1, 1.5, 1.5], vertical_alignment="bottom")
    split = top[0].selectbox(
        "Split", splits, index=splits.index(wanted) if wanted in splits else 0, format_func=split_label
    )
    if st.query_params.get("split") != split:
        st.query_params["split"] = split
    page_size = top[1].selectbox("Images per page", PAGE_SIZES, index=0)
    opacity = top[2].slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
    show_mt = top[3].toggle("MaskTune heatmap too", value=False)

    method = config["cam_method"]
    rule = config["threshold_rule"] + (
        f" ({config['topk_percent']}%)" if config["threshold_rule"] == "topk" else ""
    )
    source = (
        "The training split's masks as the run stored them for the finetune"
        if split == "train"
        else f"The finetune never saw {split}; its masks are computed now with the run's settings"
    )
    st.caption(f"{source}: {method} of the ERM model, threshold rule {rule}, fill {config['fill']}.")

    preds = inference.split_predictions(run, split)
    if preds is None or "probs_erm" not in preds or "probs_masktune" not in preds:
        st.warning(f"Run {run.id} has no predictions of both models for {split}.")
        return
    labels = preds["label"]
    groups = preds.get("group")
    probs = {model: preds[f"probs_{model}"] for model in ("erm", "masktune")}
    pred = {model: p.argmax(axis=1) for model, p in probs.items()}
    confidence = {model: p.max(axis=1) for model, p in probs.items()}
    correct = {model: pred[model] == labels for model in probs}

    with st.container(border=True):
        filters = [*st.columns(3), *st.columns(2)]
        chosen_classes = filters[0].multiselect(
            "Class (true label)",
            range(len(class_names)),
            format_func=lambda c: class_names[c],
            placeholder="all classes",
        )
        chosen_groups = []
        if groups is not None and group_names:
            chosen_groups = filters[1].multiselect(
                "Group",
                range(len(group_names)),
                format_func=lambda g: group_names[g],
                placeholder="all groups",
            )
        else:
            filters[1].caption("This dataset has no groups.")
        outcome = filters[2].selectbox("Outcome", list(OUTCOMES), format_func=OUTCOMES.get)
        erm_range = filters[3].slider("ERM confidence", 0.0, 1.0, (0.0, 1.0), 0.01, format="%.2f")
        mt_range = filters[4].slider("MaskTune confidence", 0.0, 1.0, (0.0, 1.0), 0.01, format="%.2f")

    keep = outcome_mask(outcome, correct["erm"], correct["masktune"])
    if chosen_classes:
        keep &= np.isin(labels, chosen_classes)
    if chosen_groups:
        keep &= np.isin(groups, chosen_groups)
    for model, (low, high) in (("erm", erm_range), ("masktune", mt_range)):
        keep &= (confidence[model] >= low - 1e-9) & (confidence[model] <= high + 1e-9)
    matching = np.flatnonzero(keep)
    if len(matching) == 0:
        st.info(f"No image of {split} matches these filters ({len(labels):,} images in the split).")
        return

    pages = -(-len(matching) // page_size)
    if st.session_state.get("masks_page", 1) > pages:
        st.session_state["masks_page"] = pages
    nav = st.columns([1, 4], vertical_alignment="bottom")
    page = nav[0].number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key="masks_page")
    first = (page - 1) * page_size
    shown = matching[first : first + page_size]
    nav[1].markdown(
        f"Showing **{len(shown)}** of **{len(matching):,}** matching images "
        f"(of {len(labels):,} in {split}) · matches {first + 1}–{first + len(shown)}"
    )

    heat_models = ("erm", "masktune") if show_mt else ("erm",)
    views = inference.sample_views(run, split, shown.tolist(), heat_models)
    factor = viz.upscale_factor(summary["image_size"])
    side = summary["image_size"] * factor
    masked_title = "Masked, as finetuned" if split == "train" else "Masked (computed now)"
    headers = ["Original", f"ERM heatmap ({method})", masked_title]
    if show_mt:
        headers.append(f"MaskTune heatmap ({method})")
    widths = [1] * len(headers) + [1.8]

    header_cols = st.columns(widths)
    for col, title in zip(header_cols, [*headers, "Labels"], strict=True):
        col.markdown(f"**{title}**")
    grid_rows = []
    for row, index in enumerate(shown):
        original = viz.to_hwc(views["images"][row])
        tiles = [
            original,
            viz.overlay(original, views["heat_erm"][row], opacity),
            viz.to_hwc(views["masked"][row]),
        ]
        if show_mt:
            tiles.append(viz.overlay(original, views["heat_masktune"][row], opacity))
        group = None if groups is None or not group_names else group_names[int(groups[index])]
        row_preds = {m: (int(pred[m][index]), float(confidence[m][index])) for m in ("erm", "masktune")}
        with st.container(border=True):
            cols = st.columns(widths, vertical_alignment="center")
            for col, tile in zip(cols, tiles, strict=False):
                col.image(viz.upscale(tile, factor), width=side)
            lines = [f"**#{index}** · true **{viz.md_escape(class_names[int(labels[index])])}**"]
            if group is not None:
                lines.append(f"group {viz.md_escape(group)}")
            lines += [
                verdict(m, p, c, p == int(labels[index]), class_names) for m, (p, c) in row_preds.items()
            ]
            lines.append(f"mask: {views['masks'][row].mean():.1%} of pixels")
            cols[-1].markdown("  \n".join(lines))
        grid_rows.append(
            viz.GridRow(tiles, caption_lines(int(index), int(labels[index]), group, row_preds, class_names))
        )

    title = f"{config.get('name') or run.id} · {split} · matches {first + 1}-{first + len(shown)} "
    title += f"of {len(matching)} ({OUTCOMES[outcome]})"
    st.download_button(
        "Download this grid as PNG",
        data=lambda: viz.png_bytes(viz.compose_grid(title, [*headers, "Labels"], grid_rows)),
        file_name=f"{run.id}-{split}-masks-page{page}.png",
        mime="image/png",
        icon=":material/download:",
        on_click="ignore",
    )


st.header("Masks")
st.caption(
    "Each row: the image, where the ERM model looked (saliency heatmap), the image with its most salient "
    "pixels hidden, as MaskTune's finetune sees it, and what ERM and MaskTune predict."
)
chosen = common.run_picker()
if chosen is None:
    st.stop()
with common.friendly_errors("The masks page"):
    render(chosen)
