"""Try an image: one uploaded or sampled image through both models, with heatmaps, the mask and the
selective decision under each saved threshold set."""

from __future__ import annotations

import numpy as np
import streamlit as st

from masktune_core import selective
from masktune_core.runs import Run
from studio import charts, common, inference, try_state, viz


def uploaded_image(channels: int, size: int) -> tuple[np.ndarray, str] | None:
    upload = st.file_uploader(
        "PNG or JPEG, at most 10 MB; it is checked by decoding it, whatever its name",
        type=["png", "jpg", "jpeg"],
        key=try_state.KEY_UPLOAD,
    )
    if upload is None:
        st.info("Upload an image to see what both models make of it.")
        return None
    try:
        image = inference.decode_upload(upload.getvalue())
    except inference.UploadError as err:
        st.error(f"{upload.name}: {err}")
        return None
    note = f"{upload.name} · {image.format} · {image.width} × {image.height} px"
    note += f", resized whole to {size} × {size}"
    return inference.to_model_input(image, channels, size), note


def sampled_image(run: Run, summary: dict) -> tuple[np.ndarray, str] | None:
    test_splits = summary.get("test_splits") or []
    if not test_splits:
        st.info("This run has no test split to sample from.")
        return None
    try_state.keep_split(test_splits, summary.get("main_test_split"))
    cols = st.columns([1.5, 1, 1], vertical_alignment="bottom")
    split = cols[0].selectbox("Test split", test_splits, key=try_state.KEY_SPLIT)
    data = inference.split_data(run, split)
    try_state.keep_index(len(data))
    last = len(data) - 1
    index = cols[1].number_input(f"Index (0–{last})", 0, last, step=1, key=try_state.KEY_INDEX)
    cols[2].button(
        "Random sample", on_click=try_state.random_index, args=(len(data),), icon=":material/casino:"
    )
    label = summary["class_names"][int(data.labels[index])]
    note = f"{split} #{index} · true label {label}"
    groups = summary.get("group_names")
    if data.groups is not None and groups:
        note += f" · group {groups[int(data.groups[index])]}"
    return data.images[index].numpy(), note


def decision_panel(run: Run, summary: dict, probs: dict[str, np.ndarray]) -> None:
    class_names = summary["class_names"]
    sets, problems = inference.saved_threshold_sets(run, len(class_names))
    st.subheader("Selective decision")
    for problem in problems:
        st.warning(problem)
    if not sets:
        st.caption(
            "This run has no saved threshold set, so the report's default is shown: agreement rule, "
            "t = 0.5 for every class. Save sets on the **Selective classification** page."
        )
        sets = [inference.default_threshold_set(len(class_names))]
    for threshold_set in sets:
        accepted, reason = inference.selective_decision(
            threshold_set, probs["probs_erm"], probs["probs_masktune"], class_names
        )
        rule = selective.RULES[threshold_set.rule].label
        text = f"**{viz.md_escape(threshold_set.name)}** ({rule}): {viz.md_escape(reason)}."
        if accepted:
            st.success(f"Accepted · {text}", icon=":material/check_circle:")
        else:
            st.error(f"Rejected · {text}", icon=":material/block:")


def render(run: Run) -> None:
    summary = common.dataset_summary(run)
    config = run.config()
    channels, size = summary["channels"], summary["image_size"]
    class_names: list[str] = summary["class_names"]

    try_state.default_source()
    source = st.segmented_control(
        "Image source",
        list(try_state.SOURCES),
        format_func=try_state.SOURCES.get,
        key=try_state.KEY_SOURCE,
        label_visibility="collapsed",
    )
    picked = sampled_image(run, summary) if source == "sample" else uploaded_image(channels, size)
    if picked is None:
        return
    pixels, note = picked
    st.caption(viz.md_escape(note))

    result = inference.analyse_image(run, pixels)
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=try_state.KEY_OPACITY)
    original = viz.to_hwc(pixels)
    factor = viz.upscale_factor(size, target=180)
    method = config["cam_method"]
    tiles = [
        (f"Input ({size} × {size})", original),
        ("ERM heatmap", viz.overlay(original, result["heat_erm"], opacity)),
        ("MaskTune heatmap", viz.overlay(original, result["heat_masktune"], opacity)),
        ("Mask (white = hidden)", np.repeat(result["mask"][..., None].astype(np.uint8) * 255, 3, axis=2)),
        ("Masked image", viz.to_hwc(result["masked"])),
    ]
    for col, (title, tile) in zip(st.columns(len(tiles)), tiles, strict=True):
        col.markdown(f"**{title}**")
        col.image(viz.upscale(tile, factor), width=size * factor)
    st.caption(
        f"Heatmaps: {method}, target = each model's predicted class. The mask is what MaskTune's finetune "
        f"would hide: the ERM heatmap thresholded with the run's rule ({config['threshold_rule']}), "
        f"{result['mask'].mean():.1%} of the pixels, filled {config['fill']}."
    )

    models = [m for m in charts.MODEL_ORDER if f"probs_{m}" in result]
    st.subheader("Predictions")
    cols = st.columns(len(models))
    for col, model in zip(cols, models, strict=False):
        probs = result[f"probs_{model}"]
        pred = int(probs.argmax())
        col.metric(
            common.MODEL_LABELS[model], class_names[pred], f"{probs[pred]:.1%} confidence", delta_color="off"
        )
    figure = charts.grouped_bars(
        class_names,
        {model: result[f"probs_{model}"].tolist() for model in models},
        y_title="probability",
        title="Probability per class",
        height=320,
    )
    st.plotly_chart(figure, width="stretch", config={"displayModeBar": False})
    decision_panel(run, summary, result)


st.header("Try an image")
st.caption(
    "Run one image through the run's ERM and MaskTune models: where each looks, what the finetune would "
    "mask, what each predicts, and whether the selective rule would accept the prediction."
)
chosen = common.run_picker()
if chosen is None:
    st.stop()
with common.friendly_errors("The try-an-image page"):
    render(chosen)
