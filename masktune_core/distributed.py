"""torch.distributed (DDP) for a run started by torchrun: ``torchrun --nproc-per-node N -m masktune_core``.

Every rank runs the same stages on the same global batches: the seeded order of the one-process run is
split by ``DistributedSampler`` (rank r takes positions r, r+N, ...), so each global batch is the one a
single process would have taken, and DDP averages the gradients over it. Metrics are sums reduced over
the ranks, then divided (never a mean of means). Masks: each rank computes a contiguous share of the
batches and rank 0 joins the shares into the one mask file. Only rank 0 writes the run directory.

NCCL on CUDA, gloo on the CPU. With one process (no torchrun) every helper here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from masktune_core.runs import Run

# A rank that waits longer than this in a collective gives up (a dead peer is usually seen at once,
# when its socket closes; this bounds the rest, such as a peer stopped with SIGSTOP).
TIMEOUT = timedelta(minutes=int(os.environ.get("MASKTUNE_DIST_TIMEOUT_MIN", "30")))


def launched() -> bool:
    """Whether this process is one of several started by torchrun (it sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> None:
    """Join the process group torchrun describes in the environment (once); NCCL for CUDA, else gloo."""
    if not launched() or dist.is_initialized():
        return
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) when the run is on CUDA."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any, so a cancel stops all ranks at the same step."""
    return bool(max_over_ranks(int(flag)))


def max_over_ranks(value: int) -> int:
    if not active():
        return value
    tensor = torch.tensor([value], device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def shard_positions(n: int) -> torch.Tensor:
    """This rank's positions in an epoch of ``n`` samples, by ``DistributedSampler`` (no shuffle: the run's
    seeded order is applied to them); the last positions wrap to repeat a few samples so every rank takes
    the same number of steps."""
    if not active():
        return torch.arange(n)
    sampler = DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=False)
    return torch.tensor(list(sampler), dtype=torch.long)


def shard_range(count: int, which: int | None = None) -> range:
    """A contiguous share of ``count`` items (rows, batch numbers) for rank ``which`` (default: this
    one); the first ranks take one more when ``count`` does not divide evenly."""
    which = rank() if which is None else which
    size, extra = divmod(count, world_size())
    start = which * size + min(which, extra)
    return range(start, start + size + (which < extra))


def gather_rows(rows: np.ndarray, total: int) -> np.ndarray:
    """Every rank's rows (its ``shard_range`` share of ``total``), joined in rank order on every rank."""
    if not active():
        return rows
    size = -(-total // world_size())
    padded = torch.zeros((size, *rows.shape[1:]), dtype=torch.from_numpy(rows[:0]).dtype)
    padded[: len(rows)] = torch.from_numpy(rows)
    padded = padded.to(_comm_device())
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return np.concatenate([part[: len(shard_range(total, r))].cpu().numpy() for r, part in enumerate(parts)])


def gather_parts(part: np.ndarray) -> np.ndarray:
    """Every rank's ``part`` (rows of any count, such as its share of mask batches), joined in rank
    order on every rank."""
    if not active():
        return part
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, part)
    return np.concatenate([p for p in parts if len(p)] or [part])


def _comm_device() -> torch.device:
    """Where collective tensors live: NCCL only moves CUDA tensors."""
    nccl = dist.get_backend() == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def wrap(model: nn.Module) -> nn.Module:
    """``model`` under DDP when distributed, its BatchNorm layers normalising by the statistics of the
    global batch, as in one process: SyncBatchNorm on CUDA, ``GlobalBatchNorm`` on the CPU (where
    SyncBatchNorm has no kernel). The layers are swapped in place, keeping their parameters and buffers,
    so the optimizer and the saved state_dict are unchanged."""
    if not active():
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    _use_global_batch_norm(model)
    return nn.parallel.DistributedDataParallel(model)


def _use_global_batch_norm(module: nn.Module) -> None:
    for child in module.children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            child.__class__ = GlobalBatchNorm  # same parameters, buffers and state_dict keys
        else:
            _use_global_batch_norm(child)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are all-reduced over the ranks (gloo on the CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active() and self.affine and self.track_running_stats):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average, as nn.BatchNorm does.
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return _GlobalBatchNormFunction.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, momentum
        )

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")


class _GlobalBatchNormFunction(torch.autograd.Function):
    """y = w (x - mean) / sqrt(var + eps) + b with mean and biased var over every rank's batch. Sums are
    reduced in float64 so the result matches one process's BatchNorm to float32 rounding."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        eps: float,
        momentum: float,
    ) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x64 = x.double()
        stats = torch.cat([x64.sum(dims), (x64 * x64).sum(dims), x64.new_tensor([x.numel() / x.shape[1]])])
        dist.all_reduce(stats)
        channels = x.shape[1]
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels : 2 * channels] / count - mean * mean).clamp_(min=0)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            unbiased = var * count / (count - 1).clamp(min=1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        invstd = (var + eps).rsqrt().to(x.dtype)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.count = count
        return xhat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xhat, weight, invstd = ctx.saved_tensors
        dims = [0, *range(2, grad.dim())]
        shape = [1, -1] + [1] * (grad.dim() - 2)
        grad_weight = (grad * xhat).sum(dims)
        grad_bias = grad.sum(dims)
        # d/dx through the global mean and variance needs the global sums of dxhat and dxhat * xhat.
        sums = torch.cat([grad_bias * weight, grad_weight * weight]).double()
        dist.all_reduce(sums)
        channels = weight.shape[0]
        mean_dxhat = (sums[:channels] / ctx.count).to(grad.dtype).view(shape)
        mean_dxhat_xhat = (sums[channels:] / ctx.count).to(grad.dtype).view(shape)
        grad_x = invstd.view(shape) * (grad * weight.view(shape) - mean_dxhat - xhat * mean_dxhat_xhat)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def save_masks(
    path: Path, batches: Iterable[torch.Tensor], shape: tuple[int, int, int], batch_size: int
) -> None:
    """Write the mask file from each rank's ``shard_range`` share of the batches: each rank writes its
    share beside the file, then rank 0 joins the shares in order into the one file and removes them."""
    from masktune_core import masking

    if not active():
        masking.save_masks(path, batches, shape)
        return
    n, height, width = shape
    mine = shard_range(-(-n // batch_size))
    rows = min(mine.stop * batch_size, n) - min(mine.start * batch_size, n)
    masking.save_masks(_part(path, rank()), batches, (rows, height, width))
    barrier()
    if is_main():
        parts = [_part(path, r) for r in range(world_size())]
        masking.save_masks(path, _joined(parts, batch_size), shape)
        for part in parts:
            part.unlink()
    barrier()


def _part(path: Path, which: int) -> Path:
    return path.with_name(f".{path.stem}.rank{which}{path.suffix}")


def _joined(parts: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    from masktune_core import masking

    for part in parts:
        masks = masking.load_packed_masks(part)
        yield from (masks[index] for index in torch.arange(len(masks)).split(batch_size))


class FollowerRun(Run):
    """The run directory as a rank other than 0 sees it: it reads it, and every write is left out."""

    def update_status(self, **changes: Any) -> dict[str, Any]:
        return {**self.raw_status(), **changes}

    def append_event(self, event: dict[str, Any]) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def save_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> None:
        pass


# ---------------------------------------------------------------------- launching
LOCK_HELD_ENV = "MASKTUNE_RUN_LOCK_HELD"  # set by ``launch``: the parent holds this run's lock


def launch(run: Run, nproc: int) -> dict[str, Any]:
    """Run the pipeline of ``run`` on ``nproc`` local processes through torchrun, and wait for them.

    The processes resume the run (it exists already, so every rank finds it by its id). Returns the
    run's status when they are done; a rank that died leaves it ``failed`` or, if rank 0 itself died,
    ``interrupted`` (its pid is gone).
    """
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "masktune_core",
        "resume",
        run.id,
        "--runs-dir",
        str(run.path.parent),
    ]
    run.log(f"launching {nproc} processes: {' '.join(command[1:])}")
    subprocess.run(command, env={**os.environ, LOCK_HELD_ENV: run.id}, check=False)
    return run.status()
