"""Masks: threshold rules on heatmaps, masks for a whole split, the RandMask baseline, fills, storage.

Masks are bool [N, H, W] on raw pixels (True = hidden). They are computed once per split and stored
bit-packed; masked images are made on the fly with ``apply_masks``, so no masked copy of a dataset is
ever written.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masktune_core.cam import heatmaps_and_logits
from masktune_core.config import check_choice
from masktune_core.errors import ConfigError, DataError
from masktune_core.models import Classifier
from masktune_core.runs import atomic_path


def check_threshold_rule(rule: str, topk_percent: float) -> None:
    check_choice("threshold_rule", rule)
    if rule == "topk" and not 0 < topk_percent <= 100:
        raise ConfigError("topk_percent", f"must be in (0, 100], got {topk_percent}")


def threshold_masks(heat: Tensor, rule: str = "mean+2std", topk_percent: float = 10.0) -> Tensor:
    """Bool masks [B, H, W] from heatmaps [B, H, W], on the heat's device.

    "mean+2std" (the method): mask pixels whose heat exceeds mu + 2 sigma, with mu and the population
    sigma taken over the image's strictly positive pixels; an image with no positive pixel gets an
    empty mask. "topk": the ``topk_percent`` % hottest pixels (at least one), among the positive ones;
    equal heat is broken by position (row-major), so the result is deterministic.
    """
    check_threshold_rule(rule, topk_percent)
    flat = heat.flatten(1)
    positive = flat > 0
    if rule == "mean+2std":
        count = positive.sum(dim=1, keepdim=True).clamp(min=1)
        mean = flat.clamp(min=0).sum(dim=1, keepdim=True) / count
        var = (torch.where(positive, flat - mean, 0.0) ** 2).sum(dim=1, keepdim=True) / count
        # The threshold is >= mean > 0 where a pixel is positive; ``positive`` also empties an all-zero map.
        mask = (flat > mean + 2 * var.sqrt()) & positive
    else:
        k = max(1, round(flat.shape[1] * topk_percent / 100))
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
        mask = torch.zeros_like(positive).scatter_(1, order, True) & positive
    return mask.view_as(heat)


class MaskPass(NamedTuple):
    """What one saliency pass over a split gives: its masks and the model's predictions on the way."""

    masks: Tensor  # bool [N, H, W] on the CPU, True = hidden
    probs: np.ndarray  # float32 [N, K]: softmax of the same eval-mode forward the heatmaps came from


def compute_masks(
    model: Classifier,
    images_uint8: Tensor,
    *,
    method: str = "xgradcam",
    rule: str = "mean+2std",
    topk_percent: float = 10.0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> MaskPass:
    """Masks bool [N, H, W] on the CPU for uint8 images [N, C, H, W] (the model must be on ``device``),
    with the model's softmax probabilities [N, K] from the forward pass the heatmaps already need.

    Batches stream through: heatmaps (fast path where one exists) and thresholds run on the device and
    only the bool masks and the probabilities are kept, so memory is those plus one batch.
    ``progress(done, total)`` is called after each batch.
    """
    check_choice("cam_method", method)
    check_threshold_rule(rule, topk_percent)
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be at least 1, got {batch_size}")
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"compute_masks takes uint8 images, got {images_uint8.dtype}")
    device = torch.device(device)
    model_device = next(model.parameters()).device
    if model_device.type != device.type:
        raise ValueError(f"the model is on {model_device} but masks were asked for on {device}")
    total = int(images_uint8.shape[0])
    masks = torch.zeros((total, *images_uint8.shape[-2:]), dtype=torch.bool)
    probs = []
    for start in range(0, total, batch_size):
        batch = images_uint8[start : start + batch_size].to(model_device).float() / 255
        heat, logits = heatmaps_and_logits(model, batch, method=method, fast=True)
        masks[start : start + batch.shape[0]] = threshold_masks(heat, rule, topk_percent).cpu()
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        if progress is not None:
            progress(min(start + batch_size, total), total)
    if not probs:
        return MaskPass(masks, np.zeros((0, 0), dtype=np.float32))
    return MaskPass(masks, torch.cat(probs).numpy().astype(np.float32))


def random_masks_like(masks: Tensor, generator: torch.Generator) -> Tensor:
    """RandMask baseline: per image, one near-square contiguous block with the same pixel count as that
    image's mask, at a uniformly random position; an empty mask stays empty.

    A block of ``area`` pixels is ``w = ceil(sqrt(area))`` wide: ``area // w`` full rows plus a last row
    of ``area % w`` pixels, so the count is exact even for a prime area. ``generator`` (on the CPU)
    makes the result reproducible.
    """
    n, height, width = masks.shape
    area = masks.flatten(1).sum(dim=1).cpu()
    cols = torch.ceil(torch.sqrt(area.double())).long().clamp(1, width)
    rows = torch.ceil(area / cols).long()
    # Only for images far wider than tall can ceil(sqrt(area)) rows overflow; widen the block to fit.
    too_tall = rows > height
    cols = torch.where(too_tall, torch.ceil(area / height).long(), cols).clamp(1, width)
    full_rows, last_row = area // cols, area % cols
    rows = full_rows + (last_row > 0).long()
    top = (torch.rand(n, generator=generator, dtype=torch.float64) * (height - rows + 1)).long()
    left = (torch.rand(n, generator=generator, dtype=torch.float64) * (width - cols + 1)).long()
    y = torch.arange(height).view(1, -1, 1) - top.view(-1, 1, 1)
    x = torch.arange(width).view(1, 1, -1) - left.view(-1, 1, 1)
    in_cols = (x >= 0) & (x < cols.view(-1, 1, 1))
    in_full = (y >= 0) & (y < full_rows.view(-1, 1, 1)) & in_cols
    in_last = (y == full_rows.view(-1, 1, 1)) & (x >= 0) & (x < last_row.view(-1, 1, 1))
    return (in_full | in_last).to(masks.device)


def apply_masks(
    images_uint8: Tensor, masks: Tensor, fill: str = "black", mean: Sequence[float] | None = None
) -> Tensor:
    """Masked copies (uint8 [N, C, H, W]) of images uint8 [N, C, H, W] under masks bool [N, H, W].

    "black": masked pixels become 0 in raw pixel space (the method); "mean": the dataset mean colour
    (``mean`` per channel on the [0, 1] scale); "blur": the same pixels of a Gaussian-blurred copy, with
    a kernel about a quarter of the image size. Works on the images' device; call it per batch.
    """
    check_choice("fill", fill)
    if images_uint8.shape[0] != masks.shape[0] or images_uint8.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"images {tuple(images_uint8.shape)} and masks {tuple(masks.shape)} do not match")
    hidden = masks[:, None].to(images_uint8.device)
    if fill == "black":
        return images_uint8.masked_fill(hidden, 0)
    if fill == "mean":
        if mean is None or len(mean) != images_uint8.shape[1]:
            raise ValueError("fill 'mean' needs the dataset mean, one value per channel")
        colour = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8, device=images_uint8.device)
        return torch.where(hidden, colour.view(1, -1, 1, 1), images_uint8)
    return torch.where(hidden, _blurred(images_uint8), images_uint8)


def _blurred(images_uint8: Tensor) -> Tensor:
    """Separable Gaussian blur, reflected borders, sigma derived from the kernel size as OpenCV does."""
    kernel = max(3, min(images_uint8.shape[-2:]) // 4) | 1  # odd, about a quarter of the image
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    taps = torch.arange(kernel, dtype=torch.float32, device=images_uint8.device) - kernel // 2
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    n, channels, height, width = images_uint8.shape
    x = images_uint8.float().reshape(n * channels, 1, height, width)
    x = F.pad(x, [kernel // 2] * 4, mode="reflect")
    x = F.conv2d(x, weights.view(1, 1, 1, -1))
    x = F.conv2d(x, weights.view(1, 1, -1, 1))
    return x.reshape(n, channels, height, width).round_().clamp_(0, 255).to(torch.uint8)


def save_masks(path: str | Path, masks: Tensor) -> None:
    """Store bool masks [N, H, W] bit-packed in a compressed .npz, written atomically and durably.

    Each mask takes ceil(H*W/8) bytes before compression: 98 bytes at 28x28, 128 at 32x32, 6,272 at
    224x224; the zip compression then shrinks the mostly empty rows further.
    """
    masks = masks.detach().to("cpu", torch.bool)
    bits = np.packbits(masks.flatten(1).numpy(), axis=1)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, bits=bits, shape=np.asarray(masks.shape, dtype=np.int64))


def load_masks(path: str | Path) -> Tensor:
    """Read masks written by ``save_masks``: bool [N, H, W]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "mask file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            bits, shape = data["bits"], tuple(int(s) for s in data["shape"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(str(path), f"not a mask file written by save_masks ({exc})") from exc
    if len(shape) != 3 or bits.shape != (shape[0], math.ceil(shape[1] * shape[2] / 8)):
        raise DataError(str(path), f"packed bits {bits.shape} do not match the stored shape {shape}")
    flat = np.unpackbits(bits, axis=1, count=shape[1] * shape[2])
    return torch.from_numpy(flat.astype(bool)).view(shape)
