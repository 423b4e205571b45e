"""The CUDA settings of the training loop (bf16 autocast, channels_last, DataLoader workers), run on the CPU.

No GPU is needed: ``Accel`` is passed explicitly, and the CPU's autocast takes bf16 as CUDA's does. Only
page-locking (pinned memory) needs a CUDA runtime and is not exercised here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masktune_core import train
from masktune_core.data.cache import DiskImages
from masktune_core.models import build_model

CUDA_LIKE = train.Accel(autocast_dtype=torch.bfloat16, channels_last=True, pin_memory=False)


def small_source(tmp_path: Path, transform=None) -> train.BatchSource:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=generator)
    path = tmp_path / "train.images.u8"
    path.write_bytes(images.numpy().tobytes())
    labels = (images[:, 0, :8, :8].float().mean((1, 2)) > 127).long()
    return train.BatchSource(DiskImages(path, tuple(images.shape)), labels, transform=transform)


def test_accel_for_a_cpu_device_changes_nothing() -> None:
    assert train.Accel.for_device(torch.device("cpu")) == train.Accel()


@pytest.mark.parametrize("accel", [train.Accel(), CUDA_LIKE], ids=["fp32", "bf16+channels_last"])
def test_an_epoch_trains_and_predicts_under_each_setting(tmp_path: Path, accel: train.Accel) -> None:
    source = small_source(tmp_path)
    torch.manual_seed(0)
    model = build_model("small-cnn", 2, 3, 16, [0.5] * 3, [0.25] * 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train.train_epoch(
        model,
        source,
        optimizer=optimizer,
        scheduler=scheduler,
        batch_size=8,
        augment="crop-flip",
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        accel=accel,
    )
    assert torch.isfinite(torch.tensor(stats["loss"])) and 0 <= stats["accuracy"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    probs = train.predict_probs(model, source.images, batch_size=8, device=torch.device("cpu"), accel=accel)
    assert probs.shape == (40, 2) and probs.dtype.name == "float32"
    assert abs(probs.sum(1) - 1).max() < 1e-3  # softmax taken in fp32 even under bf16
    if accel.channels_last:
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_predictions_stay_close_to_fp32(tmp_path: Path) -> None:
    source = small_source(tmp_path)
    torch.manual_seed(0)
    model = build_model("small-cnn", 2, 3, 16, [0.5] * 3, [0.25] * 3)
    cpu = torch.device("cpu")
    fp32 = train.predict_probs(model, source.images, batch_size=8, device=cpu, accel=train.Accel())
    bf16 = train.predict_probs(model, source.images, batch_size=8, device=cpu, accel=CUDA_LIKE)
    assert abs(fp32 - bf16).max() < 0.05  # bf16 keeps 8 bits of mantissa


def test_to_device_gives_channels_last_floats_in_0_1() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    x, y = train.to_device(images, torch.arange(4), torch.device("cpu"), CUDA_LIKE)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, images.float() / 255) and torch.equal(y, torch.arange(4))


def test_loader_workers_give_the_batches_read_in_process(tmp_path: Path) -> None:
    def hide_left_half(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        images = images.clone()
        images[..., :8] = index.view(-1, 1, 1, 1).to(torch.uint8)  # depends on the rows: checks the index
        return images

    source = small_source(tmp_path, transform=hide_left_half)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    inline = list(train.batches(source, order, 8, train.Accel(), workers=0))
    loaded = list(train.batches(source, order, 8, train.Accel(), workers=2))
    assert len(inline) == len(loaded) == 5
    for (a, la), (b, lb) in zip(inline, loaded, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_loader_workers_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASKTUNE_LOADER_WORKERS", raising=False)
    assert train.loader_workers(torch.device("cpu")) == 0
    assert train.loader_workers(torch.device("cuda")) >= 1
    monkeypatch.setenv("MASKTUNE_LOADER_WORKERS", "3")
    assert train.loader_workers(torch.device("cpu")) == 3
