"""Masks: threshold rules on heatmaps, masks for a whole split, the RandMask baseline, fills, storage.

Masks are bool [N, H, W] on raw pixels (True = hidden). They are computed once per split and stored
bit-packed; masked images are made on the fly with ``apply_masks``, so no masked copy of a dataset is
ever written.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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


def threshold_masks(
    heat: Tensor, rule: str = "mean+2std", topk_percent: float = 10.0, dilation: int = 0
) -> Tensor:
    """Bool masks [B, H, W] from heatmaps [B, H, W], on the heat's device.

    "mean+2std" (the method): mask pixels whose heat exceeds mu + 2 sigma, with mu and the population
    sigma taken over the image's strictly positive pixels; an image with no positive pixel gets an
    empty mask. "topk": the ``topk_percent`` % hottest pixels (at least one), among the positive ones;
    equal heat is broken by position (row-major), so the result is deterministic. ``dilation`` then
    grows each mask by that many pixels on every side (a square structuring element), for heatmaps
    that sit beside the cue rather than on it; an empty mask stays empty.
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
    mask = mask.view_as(heat)
    if dilation < 0:
        raise ConfigError("mask_dilation", f"must be at least 0, got {dilation}")
    if dilation:
        window = 2 * dilation + 1
        mask = F.max_pool2d(mask[:, None].float(), window, stride=1, padding=dilation)[:, 0] > 0
    return mask


def run_masks(heat: Tensor, config: Mapping[str, Any]) -> Tensor:
    """``threshold_masks`` with a stored run config's settings (runs made before ``mask_dilation`` existed
    had none), for the pages and reports that recompute masks the way the run did."""
    return threshold_masks(
        heat, config["threshold_rule"], config["topk_percent"], int(config.get("mask_dilation") or 0)
    )


class MaskBatch(NamedTuple):
    """One batch of a saliency pass: its masks and the model's predictions on the way."""

    masks: Tensor  # bool [B, H, W] on the CPU, True = hidden
    probs: np.ndarray  # float32 [B, K]: softmax of the same eval-mode forward the heatmaps came from


class MaskPass(NamedTuple):
    """A whole split's saliency pass (``compute_masks``): its masks and the model's predictions."""

    masks: Tensor  # bool [N, H, W] on the CPU
    probs: np.ndarray  # float32 [N, K]


def iter_masks(
    model: Classifier,
    images_uint8: Tensor | Sequence,
    *,
    method: str = "xgradcam",
    rule: str = "mean+2std",
    topk_percent: float = 10.0,
    dilation: int = 0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    batches: Sequence[int] | None = None,
) -> Iterator[MaskBatch]:
    """Mask batches bool [B, H, W] on the CPU for uint8 images [N, C, H, W] (a tensor or a memory-mapped
    split; the model must be on ``device``), one batch of ``batch_size`` images at a time, each with the
    model's softmax probabilities [B, K] from the forward pass the heatmaps already need.

    Heatmaps (fast path where one exists) and thresholds run on the device; only one batch is ever in
    memory. ``batches`` picks which batch numbers to compute (a distributed run gives each rank its
    share); the batch boundaries stay those of the whole split, so a shard's masks are bit for bit
    those of a one-process run. ``progress(done, total)`` is called after each batch.
    """
    check_choice("cam_method", method)
    check_threshold_rule(rule, topk_percent)
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be at least 1, got {batch_size}")
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"iter_masks takes uint8 images, got {images_uint8.dtype}")
    device = torch.device(device)
    model_device = next(model.parameters()).device
    if model_device.type != device.type:
        raise ValueError(f"the model is on {model_device} but masks were asked for on {device}")
    total = len(images_uint8)
    numbers = range(-(-total // batch_size)) if batches is None else batches
    done = 0
    for number in numbers:
        start = number * batch_size
        batch = images_uint8[start : start + batch_size]
        # A float32 copy on the device; CAMs stay in fp32 even where training runs under autocast.
        x = batch.to(model_device, non_blocking=True).float().div_(255)
        heat, logits = heatmaps_and_logits(model, x, method=method, fast=True)
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        yield MaskBatch(threshold_masks(heat, rule, topk_percent, dilation).cpu(), probs)
        done += len(batch)
        if progress is not None:
            progress(done if batches is not None else min(start + batch_size, total), total)


def compute_masks(model: Classifier, images_uint8: Tensor, **options: object) -> MaskPass:
    """All masks bool [N, H, W] and probabilities [N, K] at once (``iter_masks``'s batches joined), for
    small splits and tests."""
    batches = list(iter_masks(model, images_uint8, **options))  # type: ignore[arg-type]
    if not batches:
        return MaskPass(
            torch.zeros((0, *images_uint8.shape[-2:]), dtype=torch.bool), np.zeros((0, 0), dtype=np.float32)
        )
    return MaskPass(torch.cat([b.masks for b in batches]), np.concatenate([b.probs for b in batches]))


def random_masks_like(masks: Tensor, generator: torch.Generator) -> Tensor:
    """RandMask baseline: per image, one near-square contiguous block with the same pixel count as that
    image's mask, at a uniformly random position; an empty mask stays empty.

    A block of ``area`` pixels is ``w = ceil(sqrt(area))`` wide: ``area // w`` full rows plus a last row
    of ``area % w`` pixels, so the count is exact even for a prime area. ``generator`` (on the CPU)
    makes the result reproducible.
    """
    blocks = RandomBlocks(masks.flatten(1).sum(dim=1).cpu(), tuple(masks.shape[-2:]), generator)
    return blocks[torch.arange(len(masks))].to(masks.device)


class RandomBlocks:
    """``random_masks_like`` drawn once for given areas and read in batches: only the per-image block
    sizes and positions are kept, so RandMask never holds a whole split of masks."""

    def __init__(self, area: Tensor, size: tuple[int, int], generator: torch.Generator) -> None:
        n, (height, width) = len(area), size
        self.size = size
        cols = torch.ceil(torch.sqrt(area.double())).long().clamp(1, width)
        rows = torch.ceil(area / cols).long()
        # Only for images far wider than tall can ceil(sqrt(area)) rows overflow; widen the block to fit.
        too_tall = rows > height
        self.cols = torch.where(too_tall, torch.ceil(area / height).long(), cols).clamp(1, width)
        self.full_rows, self.last_row = area // self.cols, area % self.cols
        rows = self.full_rows + (self.last_row > 0).long()
        self.top = (torch.rand(n, generator=generator, dtype=torch.float64) * (height - rows + 1)).long()
        self.left = (torch.rand(n, generator=generator, dtype=torch.float64) * (width - self.cols + 1)).long()
        self.shape = (n, height, width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Tensor) -> Tensor:
        height, width = self.size
        top, left, cols = self.top[index], self.left[index], self.cols[index]
        full_rows, last_row = self.full_rows[index], self.last_row[index]
        y = torch.arange(height).view(1, -1, 1) - top.view(-1, 1, 1)
        x = torch.arange(width).view(1, 1, -1) - left.view(-1, 1, 1)
        in_cols = (x >= 0) & (x < cols.view(-1, 1, 1))
        in_full = (y >= 0) & (y < full_rows.view(-1, 1, 1)) & in_cols
        in_last = (y == full_rows.view(-1, 1, 1)) & (x >= 0) & (x < last_row.view(-1, 1, 1))
        return in_full | in_last


def apply_masks(
    images_uint8: Tensor, masks: Tensor, fill: str = "black", mean: Sequence[float] | None = None
) -> Tensor:
    """Masked copies (uint8 [N, C, H, W]) of images uint8 [N, C, H, W] under masks bool [N, H, W].

    "black": masked pixels become 0 in raw pixel space (the method); "mean": the dataset mean colour
    (``mean`` per channel on the [0, 1] scale); "blur": the same pixels of a Gaussian-blurred copy, with
    a kernel about a quarter of the image size. Two fills move content between the images of a (shuffled)
    batch, each image taking from the one before it (the first from the last), so that what the model
    learnt in a masked region is seen under any label instead of never: "swap", the masked pixels take the
    previous image's pixels at the same place; "transplant", the masked pixels become 0 and the previous
    image's masked pixels (its salient region) are pasted at their own place. A batch of one image keeps
    its own pixels under both. Works on the images' device; call it per batch.
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
    if fill == "swap":
        return torch.where(hidden, images_uint8.roll(1, 0), images_uint8)
    if fill == "transplant":
        blacked = images_uint8.masked_fill(hidden, 0)
        return torch.where(hidden.roll(1, 0), images_uint8.roll(1, 0), blacked)
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


def save_masks(
    path: str | Path,
    masks: Tensor | Iterable[Tensor],
    shape: tuple[int, int, int] | None = None,
) -> None:
    """Store bool masks [N, H, W] bit-packed in a compressed .npz, written atomically.

    ``masks`` is one tensor, or batches of one (then ``shape`` gives the whole [N, H, W]): each batch is
    packed and compressed as it comes, so saving never holds more than one batch. Each mask takes
    ceil(H*W/8) bytes before compression: 98 bytes at 28x28, 128 at 32x32, 6,272 at 224x224; the zip
    compression then shrinks the mostly empty rows further. ``np.load`` reads the file as before.
    """
    if isinstance(masks, Tensor):
        shape = tuple(masks.shape)  # type: ignore[assignment]
        masks = [masks]
    if shape is None:
        raise ValueError("save_masks needs the shape when given batches")
    n, height, width = shape
    row_bytes = math.ceil(height * width / 8)
    written = 0
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bits.npy", "w", force_zip64=True) as member:
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, row_bytes)}
            np.lib.format.write_array_header_1_0(member, header)
            for batch in masks:
                member.write(np.packbits(batch.detach().to("cpu", torch.bool).flatten(1).numpy(), axis=1))
                written += len(batch)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(shape, dtype=np.int64))
        archive.writestr("shape.npy", buffer.getvalue())
        if written != n:  # inside the block: the temporary file is dropped, nothing is renamed
            raise ValueError(f"save_masks was promised {n} masks and given {written}")


class PackedMasks:
    """Masks kept bit-packed (1/8 of a byte a pixel) and unpacked per batch: ``masks[index]`` gives
    bool [B, H, W]. A split's masks take N * ceil(H*W/8) bytes: 51 MB for 100k images at 64 px."""

    def __init__(self, bits: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.bits, self.shape = bits, shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Tensor) -> Tensor:
        _, height, width = self.shape
        rows = np.unpackbits(self.bits[np.asarray(index)], axis=-1, count=height * width)
        return torch.from_numpy(rows.astype(bool)).view(-1, height, width)

    def areas(self, chunk: int = 4096) -> Tensor:
        """Masked pixels per image, int64 [N], counted on the packed bits in chunks."""
        counts = [
            np.unpackbits(self.bits[start : start + chunk], axis=1).sum(axis=1, dtype=np.int64)
            for start in range(0, len(self), chunk)
        ]
        return torch.from_numpy(np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64))


def load_packed_masks(path: str | Path) -> PackedMasks:
    """Read masks written by ``save_masks``, still packed."""
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
    return PackedMasks(bits, shape)  # type: ignore[arg-type]


def load_masks(path: str | Path) -> Tensor:
    """Read masks written by ``save_masks``: bool [N, H, W]."""
    packed = load_packed_masks(path)
    return packed[torch.arange(len(packed))]
