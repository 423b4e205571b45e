"""Distributed helpers on two gloo processes started here (no torchrun): BatchNorm over the global batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from masktune_core import distributed

# Per-element weights of a linear loss: a per-channel constant would have no gradient through the norm.
TARGET = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


def _global_batch_norm(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    norm = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(75, 4), nn.BatchNorm1d(4))
    distributed._use_global_batch_norm(norm)
    norm.train()
    mine = x[rank::2].clone().requires_grad_(True)  # the DistributedSampler positions of each rank
    y = norm(mine)
    (y * TARGET[rank::2]).sum().backward()  # each rank's loss on its own rows
    grads = [p.grad for p in norm.parameters()]
    for grad in grads:  # averaged over the ranks, as DDP does
        dist.all_reduce(grad)
        grad /= 2
    if rank == 0:
        torch.save({"y": y.detach(), "x_grad": mine.grad, "grads": grads, "state": norm.state_dict()}, out)
    dist.destroy_process_group()


def test_global_batch_norm_equals_one_process_batch_norm(tmp_path: Path) -> None:
    out = str(tmp_path / "rank0.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_global_batch_norm, args=(f"file://{tmp_path}/rendezvous", out), nprocs=2, join=True)
    shared = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 5, 5) * 3 + 1).requires_grad_(True)
    norm = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(75, 4), nn.BatchNorm1d(4)).train()
    y = norm(x)
    # DDP's one-process equivalent: the mean of the ranks' losses.
    (y * TARGET).sum().div(2).backward()
    assert torch.allclose(shared["y"], y.detach()[0::2], atol=1e-5)
    # A rank's input gradient is that of the sum of every rank's loss (DDP averages it further up).
    assert torch.allclose(shared["x_grad"], 2 * x.grad[0::2], atol=1e-5)
    assert x.grad.abs().max() > 1e-3  # not a loss whose gradient vanishes through the normalisation
    for mine, theirs in zip(shared["grads"], [p.grad for p in norm.parameters()], strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)
    for key, value in norm.state_dict().items():
        assert torch.allclose(shared["state"][key].double(), value.double(), atol=1e-5), key
