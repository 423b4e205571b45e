"""Peak memory of a whole run against dataset size, and the disk-read path's speed against memory.

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py [--sizes 2000:64,20000:64,100000:64,5000:224]

For each ``images:pixels`` entry, an image folder of that many JPEG files (two classes told apart by a
bright square, in noise) is generated once under ``--root``. Then:

- **Peak RSS**: one full run in its own process (``python -m masktune_core run``: imagefolder, small CNN,
  one ERM epoch, masks, finetune, evaluation) with an empty dataset cache, so the figure includes
  decoding the dataset into the cache. The peak is the child's ``ru_maxrss`` from ``wait4``: the most
  resident memory it ever held, file pages mapped by the process (its shared libraries) included.
- **Throughput**: in this process, one training epoch and one prediction pass over the same training
  images (at most ``--throughput-images``), read from the cache on disk and from a tensor in
  memory (the path every run took before the cache). The ratio is disk img/s / in-memory img/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from masktune_core import models, train
from masktune_core.config import RunConfig

REPO = Path(__file__).resolve().parent.parent
RUN = {"dataset": "imagefolder", "backbone": "small-cnn", "epochs": 1, "batch_size": 128, "device": "cpu"}


def make_folder(root: Path, count: int, size: int) -> Path:
    """``count`` JPEG images of ``size`` px in two class folders; reused when already complete."""
    folder = root / f"{count}-{size}px"
    done = folder / ".complete"
    if done.is_file():
        return folder
    rng = np.random.default_rng(0)
    for label in range(2):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
    side = max(size // 6, 2)
    for i in range(count):
        label = i % 2
        pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        corner = slice(2, 2 + side) if label == 0 else slice(size - 2 - side, size - 2)
        pixels[corner, corner] = 230
        Image.fromarray(pixels).save(folder / f"class{label}" / f"{i:06d}.jpg", quality=90)
    done.write_text("")
    return folder


def full_run(folder: Path, size: int, cache: Path) -> dict[str, float]:
    """One whole run in a child process, starting from an empty cache: its peak RSS and wall time."""
    shutil.rmtree(cache, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**RUN, "image_size": size}.items()]
        command = [sys.executable, "-m", "masktune_core", "run", *flags, f"--data-dir={folder}"]
        env = {**os.environ, "MASKTUNE_CACHE_DIR": str(cache), "MASKTUNE_RUNS_DIR": f"{scratch}/runs"}
        errors = Path(scratch, "stderr.txt")
        start = time.perf_counter()
        with open(errors, "wb") as stderr:
            child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
            child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"run on {folder} failed:\n{errors.read_text()[-2000:]}")
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "run_s": seconds}


def throughput(folder: Path, size: int, cache: Path, limit: int) -> dict[str, float]:
    """Training and prediction img/s reading the cache on disk and on the same images in memory."""
    from masktune_core.data.cache import load_dataset

    os.environ["MASKTUNE_CACHE_DIR"] = str(cache)  # the cache the full run built
    config = RunConfig.from_dict({**RUN, "image_size": size, "data_dir": str(folder)}).resolved()
    bundle = load_dataset(config.dataset, config.data_options())
    split = bundle.splits["train"]
    rows = torch.arange(min(limit, len(split)))
    mapped = split.images
    in_memory = mapped[rows]
    labels = split.labels[rows]
    result = {}
    for name, images in (("memory", in_memory), ("disk", _Rows(mapped, len(rows)))):
        torch.manual_seed(0)
        model = models.build_model("small-cnn", 2, 3, size, bundle.mean, bundle.std)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        start = time.perf_counter()
        train.train_epoch(
            model,
            train.BatchSource(images, labels),
            optimizer=optimizer,
            scheduler=scheduler,
            batch_size=config.batch_size,
            augment=bundle.augment,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(0),
        )
        result[f"train_{name}_img_s"] = len(rows) / (time.perf_counter() - start)
        start = time.perf_counter()
        train.predict_probs(model, images, batch_size=config.batch_size, device=torch.device("cpu"))
        result[f"predict_{name}_img_s"] = len(rows) / (time.perf_counter() - start)
    result["train_ratio"] = result["train_disk_img_s"] / result["train_memory_img_s"]
    result["predict_ratio"] = result["predict_disk_img_s"] / result["predict_memory_img_s"]
    return result


class _Rows:
    """The first ``count`` rows of a split in the cache, still read from disk."""

    def __init__(self, images: object, count: int) -> None:
        self.images, self.count = images, count
        self.shape = torch.Size((count, *images.shape[1:]))
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: object) -> torch.Tensor:
        return self.images[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000:64,20000:64,100000:64,5000:224")
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "masktune-memory"))
    parser.add_argument("--throughput-images", type=int, default=10000)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for entry in args.sizes.split(","):
        count, size = (int(part) for part in entry.split(":"))
        folder = make_folder(Path(args.root), count, size)
        cache = Path(args.root) / f"cache-{count}-{size}px"
        row = {"images": count, "pixels": size, **full_run(folder, size, cache)}
        row.update(throughput(folder, size, cache, args.throughput_images))
        shutil.rmtree(cache)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["peak_rss_mb"]
    print(
        "\n| images | px | peak RSS (MB) | vs first | run (s) | train img/s disk / memory | predict ratio |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|")
    for row in rows:
        print(
            f"| {row['images']:,} | {row['pixels']} | {row['peak_rss_mb']:.0f} | "
            f"{row['peak_rss_mb'] / base:.2f}x | {row['run_s']:.0f} | "
            f"{row['train_disk_img_s']:.0f} / {row['train_memory_img_s']:.0f} = {row['train_ratio']:.2f}x | "
            f"{row['predict_ratio']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
