"""The masks page (AppTest) and the rendering and model helpers behind it."""

from __future__ import annotations

import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from masktune_core.runs import RunStore
from studio import common, inference, viz
from tests.apptest_pages import render_page_script

pytestmark = pytest.mark.usefixtures("fresh_caches")


def masks_page(**query: str) -> AppTest:
    return render_page_script("masks", **query)


def showing_text(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Showing"))


def test_empty_store_explains_what_to_do(empty_store: RunStore) -> None:
    at = masks_page()
    assert not at.exception
    assert any("No run in state done" in i.value for i in at.info)
    assert not at.get("image")


def test_finished_run_renders_the_grid(finished_store: RunStore) -> None:
    at = masks_page()
    assert not at.exception and not at.error
    run = finished_store.list()[0]
    train_size = common.dataset_summary(run)["split_sizes"]["train"]
    assert showing_text(at).startswith(f"Showing **8** of **{train_size:,}** matching")
    # original, ERM heatmap and masked image for each of the 8 rows
    assert len(at.get("image")) == 8 * 3
    assert at.get("download_button")

    at.toggle[0].set_value(True).run()  # the MaskTune heatmap column
    assert len(at.get("image")) == 8 * 4


def test_outcome_filter_counts_match_the_predictions(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    preds = run.predictions("val")
    erm_ok = preds["probs_erm"].argmax(1) == preds["label"]
    mt_ok = preds["probs_masktune"].argmax(1) == preds["label"]
    expected = int((~erm_ok & mt_ok).sum())

    at = masks_page(split="val")
    outcome = next(s for s in at.selectbox if s.label == "Outcome")
    outcome.set_value("erm_wrong_mt_right").run()
    assert not at.exception
    if expected == 0:
        assert any("No image of val matches" in i.value for i in at.info)
    else:
        assert f"of **{expected:,}** matching" in showing_text(at)
        assert len(at.get("image")) == 3 * min(8, expected)


def test_confidence_filter_narrows_the_matches(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    preds = run.predictions("val")
    confidence = preds["probs_erm"].max(1)
    at = masks_page(split="val")
    slider = next(s for s in at.slider if s.label == "ERM confidence")
    low = float(np.round(np.median(confidence), 2))
    slider.set_value((low, 1.0)).run()
    expected = int(((confidence >= low - 1e-9) & (confidence <= 1.0 + 1e-9)).sum())
    assert f"of **{expected:,}** matching" in showing_text(at)


def test_query_params_select_run_and_split(finished_store: RunStore) -> None:
    original = finished_store.list()[0]
    # A second run sorts first, so the link, not the default, must pick the original.
    shutil.copytree(original.path, finished_store.root / "zzz-copy")
    at = masks_page(run=original.id, split="test_original")
    assert at.selectbox(key="pick_run").value == original.id
    assert "in test_original" in showing_text(at)
    assert at.query_params["split"] == "test_original"


def test_train_masks_are_the_stored_ones_and_val_masks_follow_the_rule(finished_store: RunStore) -> None:
    from masktune_core.cam import compute_heatmaps
    from masktune_core.masking import apply_masks, load_masks, threshold_masks

    run = finished_store.list()[0]
    rows = [0, 5, 7]
    train = inference.sample_views(run, "train", rows)
    stored = load_masks(run.masks_path("iter1"))[rows].numpy()
    assert np.array_equal(train["masks"], stored)
    images = torch.from_numpy(train["images"])
    assert np.array_equal(train["masked"], apply_masks(images, torch.from_numpy(stored)).numpy())

    val = inference.sample_views(run, "val", rows, ("erm", "masktune"))
    model = common.models(run)["erm"]
    heat = compute_heatmaps(model, torch.from_numpy(val["images"]).float() / 255)
    assert np.allclose(val["heat_erm"], heat.numpy(), atol=1e-6)
    config = run.config()
    expected = threshold_masks(heat, config["threshold_rule"], config["topk_percent"])
    assert np.array_equal(val["masks"], expected.numpy())
    assert val["heat_masktune"].shape == val["heat_erm"].shape


def _direct_probs(run, model: str, count: int = 4) -> np.ndarray:
    images = common.bundle(run).splits["train"].images[:count].float() / 255
    with torch.no_grad():
        return torch.softmax(common.models(run)[model](images), dim=1).numpy()


def test_train_predictions_are_read_from_the_run(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    stored = run.predictions("train")
    assert stored is not None and {"probs_erm", "probs_masktune", "probs_randmask"} <= set(stored)
    preds = inference.split_predictions(run, "train")
    assert preds is not None and sorted(preds) == sorted(stored)
    for key, value in stored.items():
        assert np.array_equal(preds[key], value), key
    # ERM's come from the masks stage's saliency pass, the others from the evaluation: all equal a forward.
    for model in ("erm", "masktune", "randmask"):
        assert np.allclose(preds[f"probs_{model}"][:4], _direct_probs(run, model), atol=1e-5), model


def test_train_predictions_of_an_older_run_are_computed_by_the_page(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    run.predictions_path("train").unlink()  # a run made before the pipeline kept them
    preds = inference.split_predictions(run, "train")
    assert preds is not None and set(preds) >= {"label", "probs_erm", "probs_masktune"}
    assert np.allclose(preds["probs_masktune"][:4], _direct_probs(run, "masktune"), atol=1e-5)
    at = masks_page()
    assert not at.exception and not at.error


def test_changed_dataset_is_reported_not_misaligned(
    finished_store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: the dataset rebuilt with the same split sizes but its training images in another order
    (as after editing a dataset folder). Kept: the page names the dataset and the split and refuses to
    pair those images with the run's masks and predictions."""
    real_bundle = common.bundle

    def edited(run: object) -> object:
        bundle = real_bundle(run)
        train = bundle.splits["train"]
        reordered = train.subset(torch.arange(len(train)).flip(0))
        return dataclasses.replace(bundle, splits={**bundle.splits, "train": reordered})

    monkeypatch.setattr(common, "bundle", edited)
    at = masks_page()
    errors = [e.value for e in at.error if "the dataset changed since" in e.value]
    assert errors and "biased-digits" in errors[0] and "train split" in errors[0]


# ---------------------------------------------------------------------------------------- rendering
def test_jet_runs_from_blue_to_red() -> None:
    colours = viz.jet(np.array([[0.0, 0.5, 1.0]]))[0]
    assert colours[0].argmax() == 2  # blue at 0
    assert colours[1].argmax() == 1  # green at 0.5
    assert colours[2].argmax() == 0  # red at 1


def test_overlay_opacity_ends() -> None:
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    heat = np.ones((4, 4), dtype=np.float32)
    assert np.array_equal(viz.overlay(image, heat, 0.0), image)
    assert np.array_equal(viz.overlay(image, heat, 1.0), viz.jet(heat))


def test_upscale_is_nearest_neighbour() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = viz.upscale(image, 3)
    assert big.shape == (6, 6, 3)
    assert np.array_equal(big[:3, :3], np.broadcast_to(image[0, 0], (3, 3, 3)))
    assert viz.upscale_factor(28) == 5 and viz.upscale_factor(224) == 1


def test_grid_png_has_a_header_and_one_band_per_row() -> None:
    tile = np.zeros((28, 28, 3), dtype=np.uint8)
    rows = [viz.GridRow([tile, tile, tile], ["#1 true 0-4", "ERM: 0-4"]) for _ in range(3)]
    image = viz.compose_grid("run · val", ["Original", "Heatmap", "Masked", "Labels"], rows, cell=100)
    decoded = Image.open(io.BytesIO(viz.png_bytes(image)))
    assert decoded.format == "PNG"
    assert decoded.height > 3 * 100 and decoded.width > 3 * 100
    with pytest.raises(ValueError, match="headers"):
        viz.compose_grid("t", ["only one"], rows)


def test_md_escape_keeps_user_text_literal() -> None:
    assert viz.md_escape("**a** [x](y)") == r"\*\*a\*\* \[x\]\(y\)"
    assert viz.md_escape("0-4 / square") == r"0\-4 / square"


# ---------------------------------------------------------------------------------------- filters
def test_matching_applies_every_filter_together() -> None:
    from studio import masks_grid

    labels = np.array([0, 0, 1, 1, 2])
    probs_erm = np.eye(3, dtype=np.float32)[[0, 1, 1, 0, 2]] * 0.6 + 0.4 / 3  # ERM right on 0, 2, 4
    probs_mt = np.eye(3, dtype=np.float32)[[0, 0, 0, 1, 2]] * 0.9 + 0.1 / 3  # MaskTune right on 0, 1, 3, 4
    preds = {"label": labels, "group": np.array([0, 1, 0, 1, 0]), "probs_erm": probs_erm}
    assert masks_grid.SplitView.of(preds) is None  # MaskTune's predictions are missing
    view = masks_grid.SplitView.of({**preds, "probs_masktune": probs_mt})
    assert view is not None

    def match(**chosen: object) -> list[int]:
        return masks_grid.matching(view, masks_grid.Filters(**chosen)).tolist()

    assert match() == [0, 1, 2, 3, 4]
    assert match(outcome="erm_wrong_mt_right") == [1, 3]
    assert match(outcome="erm_right_mt_wrong") == [2]
    assert match(outcome="both_right", classes=[2]) == [4]
    assert match(groups=[1]) == [1, 3]
    assert match(erm_range=(0.7, 1.0), masktune_range=(0.9, 1.0)) == [0, 1, 2, 3, 4]  # 0.73 and 0.93
    assert match(erm_range=(0.8, 1.0)) == []
    first, shown = masks_grid.page_slice(np.arange(10), 2, 4)
    assert first == 4 and shown.tolist() == [4, 5, 6, 7]


def test_the_mask_caption_names_the_fills_the_finetune_candidates_used() -> None:
    from studio import masks_grid

    config = {"threshold_rule": "mean+2std", "cam_method": "xgradcam", "fill": "black"}
    alone = masks_grid.mask_source({**config, "finetune_fills": ["black"]}, "train")
    assert alone.endswith("shown with fill black.")
    several = masks_grid.mask_source({**config, "finetune_fills": ["black", "transplant"]}, "val")
    assert "The finetune never saw val" in several and "used the fills black, transplant" in several
