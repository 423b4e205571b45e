"""The default experiment stage by stage, against a bare PyTorch loop doing the same work in the same process.

    .venv/bin/python bench/pipeline.py [--json] [--repeats 2]

The bare loop trains the same model on the same tensors with the same batch size, augmentation, epochs and
per-epoch validation, computes XGradCAM masks with a plain ``autograd.grad`` loop, finetunes one epoch on the
masked images and predicts every evaluation split and the training split (ERM's training predictions are
the softmax of the masks pass's own logits, as in the product); it writes nothing. The product's run does
the same through ``pipeline.execute`` with its status, events, checkpoints, masks and predictions on disk.
The ratio (product / bare, per stage and in total) is the product's overhead. Each side runs ``--repeats``
times, alternating, and the fastest of each is kept, so a background load spike does not decide the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from masktune_core import models
from masktune_core.config import RunConfig
from masktune_core.data import build_dataset
from masktune_core.pipeline import execute
from masktune_core.runs import RunStore
from masktune_core.train import augment_batch

STAGES = ("data", "erm", "masks_1", "finetune_1", "evaluate")


def product_run(config: RunConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        run = RunStore(root).create(config.to_dict())
        start = time.perf_counter()
        status = execute(run)
        total = time.perf_counter() - start
        assert status["state"] == "done", status
        times = {e["stage"]: e["seconds"] for e in run.events() if e.get("kind") == "timing"}
    return {**{s: times[s] for s in STAGES}, "total": total}


def bare_run(config: RunConfig) -> dict[str, float]:
    times: dict[str, float] = {}
    clock = time.perf_counter()
    start = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = now - clock
        clock = now

    bundle = build_dataset(config.dataset, config.data_options())
    lap("data")
    train, val = bundle.splits["train"], bundle.splits["val"]
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = models.build_model(
        config.backbone, bundle.num_classes, bundle.channels, bundle.image_size, bundle.mean, bundle.std
    )
    steps = math.ceil(len(train) / config.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps * config.epochs)

    def epoch(images: torch.Tensor) -> None:
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for i in range(steps):
            index = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = augment_batch(images[index].float() / 255, bundle.augment, generator)
            loss = F.cross_entropy(model(x), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        model.eval()
        return torch.cat([model(images[i : i + 256].float() / 255) for i in range(0, len(images), 256)])

    for _ in range(config.epochs):
        epoch(train.images)
        predict(val.images)
    lap("erm")

    model.eval()
    activation: dict[str, torch.Tensor] = {}
    hook = model.target_layer().register_forward_hook(lambda m, i, o: activation.__setitem__("a", o))
    masks, train_probs = [], []
    for i in range(0, len(train), config.batch_size):
        x = train.images[i : i + config.batch_size].float() / 255
        logits = model(x)
        train_probs.append(torch.softmax(logits.detach(), dim=1))
        a = activation["a"]
        (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), a)
        weights = (grad * a).sum((2, 3)) / (a.sum((2, 3)) + 1e-7)
        cam = F.relu((weights[:, :, None, None] * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        flat = (flat - flat.min(1, keepdim=True).values) / (flat.max(1, keepdim=True).values + 1e-7)
        positive = flat > 0
        count = positive.sum(1, keepdim=True).clamp(min=1)
        mean = (flat * positive).sum(1, keepdim=True) / count
        std = (((flat - mean) ** 2) * positive).sum(1, keepdim=True).div(count).sqrt()
        masks.append(((flat > mean + 2 * std) & positive).view_as(cam).detach())
    hook.remove()
    masked = train.images * ~torch.cat(masks)[:, None]
    lap("masks_1")

    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.finetune_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    epoch(masked)
    lap("finetune_1")

    for name in bundle.eval_splits:  # ERM and MaskTune predictions, as the product makes
        predict(bundle.splits[name].images)
        predict(bundle.splits[name].images)
    predict(train.images)  # MaskTune's on the training split; ERM's came from the masks pass
    lap("evaluate")
    times["total"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    config = RunConfig().resolved()
    best_bare: dict[str, float] = {}
    best_product: dict[str, float] = {}
    for _ in range(args.repeats):
        for best, fn in ((best_bare, bare_run), (best_product, product_run)):
            times = fn(config)
            if not best or times["total"] < best["total"]:
                best.clear()
                best.update(times)
    rows = [
        {
            "stage": s,
            "bare_s": best_bare[s],
            "product_s": best_product[s],
            "ratio": best_product[s] / best_bare[s],
        }
        for s in (*STAGES, "total")
    ]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"default experiment ({config.dataset}, {config.backbone}, {config.epochs} epochs); {machine}")
    print("| stage | bare loop (s) | product (s) | product / bare |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['stage']} | {row['bare_s']:.2f} | {row['product_s']:.2f} | {row['ratio']:.3f} |")
    if args.json:
        print(json.dumps({"rows": rows, "machine": machine}))


if __name__ == "__main__":
    main()
