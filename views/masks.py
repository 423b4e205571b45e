"""Masks: what the ERM model found most salient, what the finetune hid, and what each model predicted."""

from __future__ import annotations

import streamlit as st

from masktune_core.runs import Run
from studio import common, inference, viz
from studio import masks_grid as grid


def filter_inputs(class_names: list[str], group_names: list[str] | None, has_groups: bool) -> grid.Filters:
    with st.container(border=True):
        cols = [*st.columns(3), *st.columns(2)]
        classes = cols[0].multiselect(
            "Class (true label)",
            range(len(class_names)),
            format_func=lambda c: class_names[c],
            placeholder="all classes",
        )
        groups = []
        if has_groups and group_names:
            groups = cols[1].multiselect(
                "Group",
                range(len(group_names)),
                format_func=lambda g: group_names[g],
                placeholder="all groups",
            )
        else:
            cols[1].caption("This dataset has no groups.")
        outcome = cols[2].selectbox("Outcome", list(grid.OUTCOMES), format_func=grid.OUTCOMES.get)
        erm_range = cols[3].slider("ERM confidence", 0.0, 1.0, (0.0, 1.0), 0.01, format="%.2f")
        mt_range = cols[4].slider("MaskTune confidence", 0.0, 1.0, (0.0, 1.0), 0.01, format="%.2f")
    return grid.Filters(classes, groups, outcome, erm_range, mt_range)


def render(run: Run) -> None:
    summary = common.dataset_summary(run)
    config = run.config()
    class_names: list[str] = summary["class_names"]
    group_names: list[str] | None = summary.get("group_names")
    splits = ["train", *summary["eval_splits"]]
    wanted = st.query_params.get("split")

    top = st.columns([2, 1, 1.5, 1.5], vertical_alignment="bottom")
    split = top[0].selectbox(
        "Split", splits, index=splits.index(wanted) if wanted in splits else 0, format_func=grid.split_label
    )
    if st.query_params.get("split") != split:
        st.query_params["split"] = split
    page_size = top[1].selectbox("Images per page", grid.PAGE_SIZES, index=0)
    opacity = top[2].slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
    show_mt = top[3].toggle("MaskTune heatmap too", value=False)
    st.caption(grid.mask_source(config, split))

    view = grid.SplitView.of(inference.split_predictions(run, split))
    if view is None:
        st.warning(f"Run {run.id} has no predictions of both models for {split}.")
        return
    filters = filter_inputs(class_names, group_names, view.groups is not None)
    matches = grid.matching(view, filters)
    total = len(view.labels)
    if len(matches) == 0:
        st.info(f"No image of {split} matches these filters ({total:,} images in the split).")
        return

    pages = grid.page_count(len(matches), page_size)
    nav = st.columns([1, 4], vertical_alignment="bottom")
    page = nav[0].number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=grid.KEY_PAGE)
    first, shown = grid.page_slice(matches, page, page_size)
    nav[1].markdown(
        f"Showing **{len(shown)}** of **{len(matches):,}** matching images "
        f"(of {total:,} in {split}) · matches {first + 1}–{first + len(shown)}"
    )

    heat_models = grid.MODELS if show_mt else ("erm",)
    images = inference.sample_views(run, split, shown.tolist(), heat_models)
    rows = grid.grid_rows(view, shown, images, opacity, class_names, group_names)
    titles = grid.headers(config["cam_method"], split, show_mt)
    factor = viz.upscale_factor(summary["image_size"])
    widths = [1] * len(titles) + [1.8]
    for col, title in zip(st.columns(widths), [*titles, "Labels"], strict=True):
        col.markdown(f"**{title}**")
    for row in rows:
        with st.container(border=True):
            cols = st.columns(widths, vertical_alignment="center")
            for col, tile in zip(cols, row.tiles, strict=False):
                col.image(viz.upscale(tile, factor), width=summary["image_size"] * factor)
            cols[-1].markdown(row.markdown)

    title = f"{config.get('name') or run.id} · {split} · matches {first + 1}-{first + len(shown)} "
    title += f"of {len(matches)} ({grid.OUTCOMES[filters.outcome]})"
    st.download_button(
        "Download this grid as PNG",
        data=lambda: grid.grid_png(title, titles, rows),
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
