"""One training loop, used by ERM and by the MaskTune finetune, plus batched prediction.

Images stay uint8 in memory; each batch is masked (finetune), scaled to [0, 1], moved to the device and
augmented there in one batched op, so the loop never decodes or copies a whole split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from masktune_core import distributed
from masktune_core.config import RunConfig

StepCallback = Callable[[int, int, float], None]  # (step, steps_in_epoch, loss)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from masktune_core.errors import ConfigError

            raise ConfigError("device", "cuda was requested but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(config: RunConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_scheduler(
    config: RunConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch, so the schedule really moves (the reference code's never did)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(total_steps // 3, 1), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@dataclass(frozen=True)
class Accel:
    """How a device runs the model. ``for_device`` picks the CUDA settings; tests pass them on the CPU
    (CPU autocast takes bf16 too), so every branch runs without a GPU."""

    autocast_dtype: torch.dtype | None = None  # None: fp32
    channels_last: bool = False
    pin_memory: bool = False

    @staticmethod
    def for_device(device: torch.device) -> Accel:
        if device.type != "cuda":
            return Accel()
        # cuDNN times its kernels once per input shape and keeps the fastest: the shapes here are fixed.
        torch.backends.cudnn.benchmark = True
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Accel(autocast_dtype=dtype, channels_last=True, pin_memory=True)

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Convolutions run faster on NHWC on tensor cores; the weights follow the inputs' layout."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


# ---------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, policy: str, generator: torch.Generator, share: int = 1) -> torch.Tensor:
    """Random per-image affine jitter (and flips) in one ``grid_sample`` call on the batch's device.

    With ``share`` ranks, the draws are made for the whole global batch and this rank keeps its rows
    (r, r + N, ...: its ``DistributedSampler`` positions), so every image gets the jitter it gets in
    one process.
    """
    if policy == "none":
        return x
    b = x.shape[0]
    mine = slice(distributed.rank() if share > 1 else 0, None, share)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape[0] * share, *shape[1:], generator=generator)[mine].to(x.device)

    theta = torch.zeros(b, 2, 3, device=x.device)
    angle = torch.zeros(b, device=x.device)
    scale = torch.ones(b, device=x.device)
    if policy == "affine":
        angle = (rand(b) * 2 - 1) * math.radians(10)
        scale = 1 + (rand(b) * 2 - 1) * 0.08
    shift = (rand(b, 2) * 2 - 1) * (2 * 0.125)  # up to 1/8 of the side, in [-1, 1] grid units
    theta[:, 0, 0] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = shift
    if policy == "crop-flip":
        flip = rand(b) < 0.5
        theta[flip, 0, :2] *= -1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------- batches
@dataclass
class BatchSource:
    """A split's uint8 images and labels, with an optional per-batch transform (masking) on raw pixels."""

    images: torch.Tensor
    labels: torch.Tensor
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (images, index) -> images

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(
        self, index: torch.Tensor, device: torch.device, accel: Accel | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.host_batch(index, pin=accel is not None and accel.pin_memory)
        return to_device(images, labels, device, accel)

    def host_batch(self, index: torch.Tensor, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's uint8 images (masked) and labels in host memory, page-locked with ``pin``."""
        images = self.images[index]
        if self.transform is not None:
            images = self.transform(images, index)
        labels = self.labels[index]
        if pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, accel: Accel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images to float [0, 1] on ``device`` (copied as uint8: 4x fewer bytes on the bus; from
    pinned memory the copy is asynchronous), NHWC in memory where ``accel`` says so."""
    x = images.to(device, non_blocking=True).float().div_(255)
    if accel is not None and accel.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device, non_blocking=True)


def batches(
    source: BatchSource, order: torch.Tensor, batch_size: int, accel: Accel, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Host batches of ``source`` in ``order``. With ``workers``, DataLoader processes read (and mask)
    them ahead, into pinned memory when ``accel`` says so, so reading the memory map never starves a
    GPU; without, they are read in this process, as the CPU path needs nothing more."""
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if workers == 0:
        for index in chunks:
            yield source.host_batch(index, pin=accel.pin_memory)
        return
    loader = torch.utils.data.DataLoader(
        _Batches(source, chunks),
        batch_size=None,
        num_workers=workers,
        pin_memory=accel.pin_memory,
        prefetch_factor=4,
        persistent_workers=False,
    )
    yield from loader


class _Batches(torch.utils.data.Dataset):
    def __init__(self, source: BatchSource, chunks: list[torch.Tensor]) -> None:
        self.source, self.chunks = source, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.host_batch(self.chunks[i])


def loader_workers(device: torch.device) -> int:
    """DataLoader workers for a run: on CUDA, enough to keep the GPU fed (MASKTUNE_LOADER_WORKERS
    overrides); on the CPU none, since a worker would take a core from the training itself."""
    if "MASKTUNE_LOADER_WORKERS" in os.environ:
        return max(int(os.environ["MASKTUNE_LOADER_WORKERS"]), 0)
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def train_epoch(
    model: nn.Module,
    source: BatchSource,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    augment: str,
    device: torch.device,
    generator: torch.Generator,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    accel: Accel | None = None,
    workers: int | None = None,
) -> dict[str, float]:
    """One pass over ``source`` in a seeded random order. Returns mean loss and accuracy on the pass.

    ``batch_size`` is the global batch: in a distributed run each of the N ranks takes batch_size / N
    of it (see ``distributed``), and loss and accuracy are summed over the ranks.
    """
    accel = Accel.for_device(device) if accel is None else accel
    model.train()
    accel.prepare(model)
    net = distributed.wrap(model)
    share = distributed.world_size()
    scaler = torch.amp.GradScaler("cuda") if accel.autocast_dtype == torch.float16 else None
    order = torch.randperm(len(source), generator=generator)[distributed.shard_positions(len(source))]
    local_batch = batch_size // share
    steps = math.ceil(len(order) / local_batch)
    workers = loader_workers(device) if workers is None else workers
    total_loss, correct, seen = 0.0, 0, 0
    for step, (images, labels) in enumerate(batches(source, order, local_batch, accel, workers)):
        if should_stop is not None and should_stop():
            raise InterruptedError("cancelled")
        x, y = to_device(images, labels, device, accel)
        x = augment_batch(x, augment, generator, share)
        with accel.autocast(device):
            logits = net(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        batch_loss = float(loss.detach())
        total_loss += batch_loss * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if on_step is not None:
            on_step(step + 1, steps, batch_loss)
    total_loss, correct, seen = distributed.sum_over_ranks([total_loss, correct, seen])
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    accel: Accel | None = None,
) -> np.ndarray:
    """Softmax probabilities [N, K] (float32), in eval mode, no augmentation. In a distributed run
    each rank predicts a contiguous share of the rows and every rank gets all of them."""
    accel = Accel.for_device(device) if accel is None else accel
    was_training = model.training
    model.eval()
    accel.prepare(model)
    outputs = []
    source = BatchSource(images, torch.zeros(len(images), dtype=torch.long))
    rows = distributed.shard_range(len(images))
    for index in torch.arange(rows.start, rows.stop).split(batch_size * 2):
        x, _ = source.batch(index, device, accel)
        with accel.autocast(device):
            logits = model(x)
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    mine = torch.cat(outputs).numpy().astype(np.float32) if outputs else np.zeros((0, 0), np.float32)
    if distributed.active():  # a rank with no rows (fewer rows than ranks) learns the width from the others
        classes = distributed.max_over_ranks(mine.shape[1])
        return distributed.gather_rows(mine.reshape(len(mine), classes), len(images))
    return mine
