"""Model work for the pages: upload checks, heatmaps, masks and predictions of a run's models, cached.

``decode_upload``, ``to_model_input`` and ``selective_decision`` are pure (no Streamlit state) so they are
unit-tested directly. The cached functions take the run's path and the checkpoints' mtimes as their key,
so a run that is retrained or resumed is never served stale results; models and datasets are passed as
``_``-prefixed arguments, which Streamlit does not hash.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image, ImageOps, UnidentifiedImageError

from masktune_core import selective
from masktune_core.errors import ConfigError, DataError
from masktune_core.runs import Run
from studio import common

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # the same limit as server.maxUploadSize in .streamlit/config.toml
MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels: any real photo fits; below Pillow's own bomb limit
UPLOAD_FORMATS = ("PNG", "JPEG")
HEATMAP_BATCH = 32

# The cached models are shared by every browser session, and a CAM call hooks the model's target layer
# while it runs: two sessions interleaving would read each other's activations.
_MODEL_LOCK = threading.Lock()

_CONFIDENCE_NAMES = {
    "agreement": "MaskTune's probability",
    "product": "the product rule's confidence",
    "softmax_erm": "ERM's top probability",
    "softmax_masktune": "MaskTune's top probability",
}


# ---------------------------------------------------------------------------------------- uploads
class UploadError(ValueError):
    """An uploaded file that cannot be used; the message is one sentence for the user."""


def decode_upload(
    data: bytes, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS
) -> Image.Image:
    """Decode an uploaded PNG or JPEG, judged by its content, never by its name.

    Raises UploadError for an empty or oversized file, a file that is not a PNG or JPEG image, an image
    over ``max_pixels`` (checked from the header, before any pixel is decoded, and Pillow's own
    decompression-bomb guard made an error) and a damaged or truncated image. The result is fully
    decoded and turned upright by its EXIF orientation.
    """
    if not data:
        raise UploadError("The file is empty.")
    if len(data) > max_bytes:
        raise UploadError(f"The file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    too_many = f"The image has too many pixels; the limit is {max_pixels / 1e6:g} megapixels."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in UPLOAD_FORMATS:
                raise UploadError(f"This is a {image.format} image; upload a PNG or JPEG.")
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(f"{too_many} This one is {width} x {height}.")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(too_many) from None
    except UnidentifiedImageError:
        raise UploadError("The file is not an image Pillow can read; upload a PNG or JPEG.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, UploadError):
            raise
        raise UploadError(f"The image is damaged or truncated and cannot be decoded ({err}).") from None
    ImageOps.exif_transpose(image, in_place=True)  # in place keeps ``format`` for the page's caption
    return image


def to_model_input(image: Image.Image, channels: int, size: int) -> np.ndarray:
    """uint8 [channels, size, size], resized whole (no crop) with bilinear filtering, as the datasets are.

    Transparent pixels are laid over black, the background of the digit datasets, instead of keeping
    whatever colour a PNG stores under them.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None].copy() if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------- selective
def default_threshold_set(num_classes: int) -> selective.ThresholdSet:
    """The report's rule at one threshold for every class, used when a run has no saved set."""
    return selective.ThresholdSet(
        name="default: agreement, t = 0.5",
        rule="agreement",
        thresholds=selective.Thresholds.build(num_classes, 0.5),
        fitted_on="none",
    )


def saved_threshold_sets(run: Run, num_classes: int) -> tuple[list[selective.ThresholdSet], list[str]]:
    """The run's saved sets that parse for its class count, and one message per set that does not."""
    sets, problems = [], []
    for name, value in run.threshold_sets().items():
        try:
            sets.append(selective.ThresholdSet.from_json(json.dumps(value), num_classes))
        except ConfigError as err:
            problems.append(f"saved threshold set {name!r} is unusable: {err}")
    return sets, problems


def selective_decision(
    threshold_set: selective.ThresholdSet,
    probs_erm: np.ndarray,
    probs_masktune: np.ndarray,
    class_names: Sequence[str],
) -> tuple[bool, str]:
    """Accept or reject one sample under a threshold set, with the reason in one sentence."""
    rule = threshold_set.rule
    # The label only feeds correctness, which a decision does not use.
    scored = selective.score(rule, probs_erm[None], probs_masktune[None], np.zeros(1, dtype=np.int64))
    accepted = bool(selective.accepted(scored, threshold_set.thresholds)[0])
    pred = int(scored.pred[0])
    if not scored.agree[0] and rule == "agreement":
        erm, masktune = class_names[int(probs_erm.argmax())], class_names[int(probs_masktune.argmax())]
        return False, f"the models disagree: ERM predicts {erm}, MaskTune predicts {masktune}"
    t = float(threshold_set.thresholds.class_thresholds[pred])
    w = float(threshold_set.thresholds.weights[pred])
    confidence = float(scored.confidence[0])
    what = _CONFIDENCE_NAMES.get(rule, "the confidence")
    bound = f"{t:.3f}" if w == 1.0 else f"{t:.3f} x weight {w:.2f} = {t * w:.3f}"
    sign = "≥" if accepted else "<"
    return accepted, f"{what} for {class_names[pred]} is {confidence:.3f} {sign} the threshold {bound}"


def _float_images(images_uint8: Any) -> Any:  # -> torch.Tensor; torch is imported lazily
    import torch

    return torch.as_tensor(images_uint8).float() / 255


# ---------------------------------------------------------------------------------------- dataset
def split_data(run: Run, split: str) -> Any:
    """The run's ``split`` (a ``Split``) as the dataset builds it now.

    Raises DataError naming the dataset and the split when the images, labels or groups differ from the
    ones the run was made on (the fingerprint in dataset.json; runs recorded before fingerprints existed
    are compared by size): the dataset's files or code changed since, and its images would no longer line
    up with the stored masks and predictions.
    """
    data = common.bundle(run).splits[split]
    summary = common.dataset_summary(run)
    recorded = summary.get("fingerprints", {}).get(split)
    changed = (
        data.fingerprint != recorded
        if recorded
        else summary.get("split_sizes", {}).get(split, len(data)) != len(data)
    )
    if changed:
        raise DataError(
            run.config().get("dataset", "dataset"),
            f"the {split} split ({len(data):,} images now) is not the one run {run.id} was made on; "
            "the dataset changed since, so its images no longer line up with the run's masks and predictions",
        )
    return data


# ---------------------------------------------------------------------------------------- predictions
def split_predictions(run: Run, split: str) -> dict[str, np.ndarray] | None:
    """``label``, ``group`` (if any) and ``probs_<model>`` for every sample of ``split``, as the run saved
    them: the pipeline keeps the training split's predictions too (ERM's from its saliency pass, the
    others at evaluation). Only a run made before it did so has its training split predicted here, once
    per run and cached.
    """
    stored = common.predictions(run, split)
    trained = [name for name in common.MODEL_LABELS if run.checkpoint_path(name).exists()]
    if split != "train" or (stored is not None and all(f"probs_{name}" in stored for name in trained)):
        return stored
    data = split_data(run, "train")
    return _train_predictions(
        str(run.path), common.checkpoint_stamps(run), _models=common.models(run), _split=data
    )


@st.cache_data(show_spinner="Predicting the training split once for this run…", max_entries=4)
def _train_predictions(
    run_path: str, stamps: tuple[float, ...], _models: dict[str, Any], _split: Any
) -> dict[str, np.ndarray]:
    import torch

    from masktune_core.train import predict_probs

    out = {"index": np.arange(len(_split)), "label": _split.labels.numpy()}
    if _split.groups is not None:
        out["group"] = _split.groups.numpy()
    with _MODEL_LOCK:
        for name, model in _models.items():
            out[f"probs_{name}"] = predict_probs(
                model, _split.images, batch_size=128, device=torch.device("cpu")
            )
    return out


# ---------------------------------------------------------------------------------------- heatmaps, masks
def sample_views(
    run: Run, split: str, indices: Sequence[int], heat_models: Sequence[str] = ("erm",)
) -> dict[str, np.ndarray]:
    """Everything the masks grid draws for the samples ``indices`` of ``split``, computed for them only.

    Returns ``images`` uint8 [B, C, H, W], ``heat_<model>`` float32 [B, H, W] in [0, 1] for each of
    ``heat_models``, ``masks`` bool [B, H, W] and ``masked`` uint8 [B, C, H, W]. On the training split the
    masks are the ones stored for the finetune; on other splits they are made now from the ERM heatmaps
    with the run's threshold rule. Either way the masked image uses the run's fill.
    """
    masks_file = run.masks_path("iter1") if split == "train" else None
    return _sample_views(
        str(run.path),
        common.checkpoint_stamps(run),
        split,
        tuple(int(i) for i in indices),
        tuple(heat_models),
        _models=common.models(run),
        _split=split_data(run, split),
        _stored_masks=None
        if masks_file is None
        else _stored_masks(str(masks_file), common.mtime(masks_file)),
    )


@st.cache_resource(show_spinner="Reading the stored masks…", max_entries=2)
def _stored_masks(path: str, mtime: float) -> Any:
    from masktune_core.masking import load_packed_masks

    return load_packed_masks(path)  # unpacked per page of samples: 1/8 of the bool masks' memory


@st.cache_data(show_spinner="Computing heatmaps for this page…", max_entries=64)
def _sample_views(
    run_path: str,
    stamps: tuple[float, ...],
    split: str,
    indices: tuple[int, ...],
    heat_models: tuple[str, ...],
    _models: dict[str, Any],
    _split: Any,
    _stored_masks: Any,
) -> dict[str, np.ndarray]:
    import torch

    from masktune_core.report.gallery import sample_views as views

    run = Run(Path(run_path))
    config, mean = run.config(), common.dataset_summary(run)["mean"]
    index = torch.tensor(indices, dtype=torch.long)
    stored = None if _stored_masks is None else _stored_masks[index]
    with _MODEL_LOCK:
        return views(_models, _split.images[index], config, mean, stored, heat_models, batch=HEATMAP_BATCH)


def analyse_image(run: Run, image: np.ndarray) -> dict[str, Any]:
    """Both models on one uint8 image [C, H, W] already in the run's format: ``probs_<model>`` [K] and
    ``heat_<model>`` [H, W] for every trained model, the ERM-based ``mask`` [H, W] (the run's threshold
    rule) and the ``masked`` image [C, H, W] (the run's fill)."""
    return _analyse_image(str(run.path), common.checkpoint_stamps(run), image, _models=common.models(run))


@st.cache_data(show_spinner="Running both models…", max_entries=32)
def _analyse_image(
    run_path: str, stamps: tuple[float, ...], image: np.ndarray, _models: dict[str, Any]
) -> dict[str, Any]:
    import torch

    from masktune_core.cam import compute_heatmaps
    from masktune_core.masking import apply_masks, run_masks

    run = Run(Path(run_path))
    config, mean = run.config(), common.dataset_summary(run)["mean"]
    pixels = torch.from_numpy(np.ascontiguousarray(image))[None]
    x = _float_images(pixels)
    out: dict[str, Any] = {}
    with _MODEL_LOCK:
        for name, model in _models.items():
            with torch.no_grad():
                out[f"probs_{name}"] = torch.softmax(model(x), dim=1)[0].numpy()
            out[f"heat_{name}"] = compute_heatmaps(model, x, method=config["cam_method"])[0].numpy()
    mask = run_masks(torch.from_numpy(out["heat_erm"])[None], config)
    out["mask"] = mask[0].numpy()
    out["masked"] = apply_masks(pixels, mask, fill=config["fill"], mean=mean)[0].numpy()
    return out
