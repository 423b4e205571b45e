"""Time the mask stage's saliency maps against a plain forward pass, on random inputs.

For each backbone and size, three things run on the same batch in the same process:

- ``forward``: an inference forward pass (eval mode, ``torch.no_grad()``), the floor for any CAM;
- ``gradcam``: pytorch-grad-cam's ``XGradCAM`` with ``targets=None``, as its documentation uses it;
- ``ours``: ``compute_heatmaps(model, x, "xgradcam")``, the fast path the mask stage uses.

Each is warmed up, then timed in interleaved rounds (forward, gradcam, ours, forward, ...), so load from
other processes on a shared machine hits the three alike; the median round time of each is reported. The
ratios are time ratios against the forward pass (1.0 = as fast as a forward pass; higher is slower).
``max_abs_diff`` is the largest difference between the library's and our heatmaps.

    .venv/bin/python bench/masks.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from masktune_core.cam import compute_heatmaps  # noqa: E402
from masktune_core.models import build_model  # noqa: E402

# (backbone, image size, batch): batch 128, or 32 at 224 px.
FULL_GRID = [
    ("small-cnn", 28, 128),
    ("resnet18", 32, 128),
    ("resnet18", 64, 128),
    ("resnet18", 224, 32),
    ("resnet50", 32, 128),
    ("resnet50", 64, 128),
    ("resnet50", 224, 32),
]
QUICK_GRID = [("small-cnn", 28, 128), ("resnet18", 32, 128), ("resnet50", 64, 128)]
WARMUP = 1
REPEATS, QUICK_REPEATS = 5, 3


def measure(backbone: str, size: int, batch: int, warmup: int, repeats: int) -> dict:
    from pytorch_grad_cam import XGradCAM

    torch.manual_seed(0)
    model = build_model(backbone, 10, 3, size, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(batch, 3, size, size)
    layer = model.target_layer()

    def library() -> torch.Tensor:
        # A CAM object per batch, released before the next forward, so its hooks never see our passes.
        cam = XGradCAM(model=model, target_layers=[layer])
        try:
            return torch.from_numpy(cam(input_tensor=x, targets=None))
        finally:
            cam.activations_and_grads.release()
            cam.outputs = None

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def gradcam() -> None:
        library()

    def ours() -> None:
        compute_heatmaps(model, x, "xgradcam", fast=True)

    runs: dict[str, Callable[[], None]] = {"forward": forward, "gradcam": gradcam, "ours": ours}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    diff = (compute_heatmaps(model, x, "xgradcam", fast=True) - library()).abs().max().item()
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "forward_ips": batch / median["forward"],
        "gradcam_ips": batch / median["gradcam"],
        "ours_ips": batch / median["ours"],
        "ours_over_forward": median["ours"] / median["forward"],
        "gradcam_over_forward": median["gradcam"] / median["forward"],
        "max_abs_diff": diff,
    }


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def _ips(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def markdown(rows: list[dict], load_before: str) -> str:
    lines = [
        f"CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}; torch {torch.__version__}; "
        f"1-min load average {load_before} before the run, {load_average()} after "
        f"({os.cpu_count()} cores: a load above that means other processes shared the CPU)",
        "",
        "| backbone | size | batch | forward img/s | pytorch-grad-cam img/s | ours img/s "
        "| ours / forward (time) | grad-cam / forward (time) | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['size']} | {r['batch']} | {_ips(r['forward_ips'])} "
            f"| {_ips(r['gradcam_ips'])} | {_ips(r['ours_ips'])} | {r['ours_over_forward']:.2f}x "
            f"| {r['gradcam_over_forward']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one size per backbone and 3 rounds instead of 5"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on the last line")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    grid, repeats = (QUICK_GRID, QUICK_REPEATS) if args.quick else (FULL_GRID, REPEATS)
    load_before = load_average()
    rows = []
    for backbone, size, batch in grid:
        rows.append(measure(backbone, size, batch, warmup=WARMUP, repeats=repeats))
        print(
            f"{backbone} {size}px x{batch}: ours/forward {rows[-1]['ours_over_forward']:.2f}, "
            f"grad-cam/forward {rows[-1]['gradcam_over_forward']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        print(markdown(rows, load_before))


if __name__ == "__main__":
    main()
