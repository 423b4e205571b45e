"""One training loop, used by ERM and by the MaskTune finetune, plus batched prediction.

Images stay uint8 in memory; each batch is masked (finetune), scaled to [0, 1], moved to the device and
augmented there in one batched op, so the loop never decodes or copies a whole split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


# ---------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """Random per-image affine jitter (and flips) in one ``grid_sample`` call on the batch's device."""
    if policy == "none":
        return x
    b = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(x.device)  # noqa: E731
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

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[index]
        if self.transform is not None:
            images = self.transform(images, index)
        if device.type == "cuda":
            images = images.pin_memory()
        x = images.to(device, non_blocking=True).float().div_(255)
        return x, self.labels[index].to(device, non_blocking=True)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


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
) -> dict[str, float]:
    """One pass over ``source`` in a seeded random order. Returns mean loss and accuracy on the pass."""
    model.train()
    scaler = (
        torch.amp.GradScaler("cuda") if device.type == "cuda" and not torch.cuda.is_bf16_supported() else None
    )
    order = torch.randperm(len(source), generator=generator)
    steps = math.ceil(len(source) / batch_size)
    total_loss, correct, seen = 0.0, 0, 0
    for step in range(steps):
        if should_stop is not None and should_stop():
            raise InterruptedError("cancelled")
        index = order[step * batch_size : (step + 1) * batch_size]
        x, y = source.batch(index, device)
        x = augment_batch(x, augment, generator)
        with _autocast(device):
            logits = model(x)
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
        total_loss += batch_loss * len(index)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(index)
        if on_step is not None:
            on_step(step + 1, steps, batch_loss)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device
) -> np.ndarray:
    """Softmax probabilities [N, K] (float32), in eval mode, no augmentation."""
    was_training = model.training
    model.eval()
    outputs = []
    source = BatchSource(images, torch.zeros(len(images), dtype=torch.long))
    for start in range(0, len(images), batch_size * 2):
        index = torch.arange(start, min(start + batch_size * 2, len(images)))
        x, _ = source.batch(index, device)
        with _autocast(device):
            logits = model(x)
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).numpy().astype(np.float32)
