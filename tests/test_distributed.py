"""Distributed runs: torchrun with gloo and 2 CPU processes against one process, on a tiny image folder.

Tolerance. The two runs take the same global batches in the same order with the same augmentation
draws, and BatchNorm normalises by the whole global batch's statistics on both (see
masktune_core.distributed), so they differ only by float rounding: DDP sums the ranks' gradients in
another order than one backward pass, and the global BatchNorm sums its statistics in float64 where
one process's kernel works in float32 (~1e-7 relative each step). Over this test's 12 ERM steps and 6
finetune steps that stays below ``PROB_TOLERANCE`` in every predicted probability, and every accuracy is
equal. Over hundreds of steps rounding differences grow as in any two runs on different hardware: the
default run's figures (docs/benchmarks.md) show how far. The runs use SGD: Adam (the image-folder
recipe's optimizer) divides each step by the root of its second moment, which magnifies the rounding gap
on near-zero gradient entries (measured 1.4e-5 on this test with Adam), so it would test Adam, not DDP.

Both runs train the recipe's finetune candidates and must keep the same one: every rank scores them on
the same gathered val predictions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masktune_core import masking, models
from masktune_core.runs import Run, RunStore

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 300
PROB_TOLERANCE = 1e-5  # absolute, on each softmax probability of each split and model (measured: 1.8e-7)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 48 noisy 16 px images, told apart by where a bright square sits."""
    root = tmp_path_factory.mktemp("ddp-images")
    rng = np.random.default_rng(0)
    for label, corner in (("top-left", slice(2, 8)), ("bottom-right", slice(8, 14))):
        (root / label).mkdir()
        for index in range(48):
            pixels = rng.integers(0, 120, size=(16, 16, 3), dtype=np.uint8)
            pixels[corner, corner] = 230
            Image.fromarray(pixels).save(root / label / f"{index:02d}.png")
    return root


def flags(image_dir: Path, backbone: str, **changes: object) -> list[str]:
    options = {
        "dataset": "imagefolder", "data-dir": str(image_dir), "backbone": backbone, "image-size": 16,
        "epochs": 2, "batch-size": 16, "randmask": True, "seed": 0, "device": "cpu", "optimizer": "sgd",
        "lr": 0.01, **changes,
    }  # fmt: skip
    out = []
    for key, value in options.items():
        out += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return out


def cli(*args: str, wait: bool = True) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "masktune_core", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT_S)


def finished(root: Path, *args: str) -> Run:
    result = cli("run", *args, "--runs-dir", str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = RunStore(root).list()
    assert run.status()["state"] == "done"
    return run


@pytest.fixture(scope="module")
def pair(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, Run]]:
    """For each backbone: (one-process run, two-process run) of the same config and seed."""
    runs = {}
    for backbone in ("small-cnn", "vgg"):
        one = finished(tmp_path_factory.mktemp(f"one-{backbone}"), *flags(image_dir, backbone))
        two = finished(tmp_path_factory.mktemp(f"two-{backbone}"), *flags(image_dir, backbone, nproc=2))
        runs[backbone] = (one, two)
    return runs


def accuracies(run: Run) -> dict[tuple[str, str], float]:
    return {
        (split, model): values["accuracy"]
        for split, by_model in run.metrics()["splits"].items()
        for model, values in by_model.items()
    }


def test_two_processes_match_one_within_the_stated_tolerance(pair: dict[str, tuple[Run, Run]]) -> None:
    for backbone, (one, two) in pair.items():
        assert two.config()["nproc"] == 2 and one.config()["nproc"] == 1
        assert accuracies(one) == accuracies(two), backbone
        chosen = [json.loads(run.file("candidates.json").read_text())["1"] for run in (one, two)]
        assert len(chosen[0]["candidates"]) > 1 and chosen[0]["selected"] == chosen[1]["selected"], backbone
        assert [c["name"] for c in chosen[0]["candidates"]] == [c["name"] for c in chosen[1]["candidates"]]
        for split in one.prediction_splits():
            a, b = one.predictions(split), two.predictions(split)
            for name in ("probs_erm", "probs_masktune", "probs_randmask"):
                gap = np.abs(a[name] - b[name]).max()
                print(f"{backbone} {split} {name}: largest probability gap {gap:.2e}")
                assert gap < PROB_TOLERANCE, (backbone, split, name, gap)


def test_sharded_masks_equal_one_process_bit_for_bit(pair: dict[str, tuple[Run, Run]]) -> None:
    from masktune_core.config import RunConfig
    from masktune_core.data.cache import load_dataset

    for _, two in pair.values():
        # The same ERM checkpoint, masked in one process, gives the file the two ranks assembled.
        config = RunConfig.from_dict(two.config())
        bundle = load_dataset(config.dataset, config.data_options())
        model = models.build_model(
            config.backbone, bundle.num_classes, bundle.channels, bundle.image_size, bundle.mean, bundle.std
        )
        models.load_state(model, two.checkpoint_path("erm"))
        expected = masking.compute_masks(
            model,
            bundle.splits["train"].images,
            method=config.cam_method,
            rule=config.threshold_rule,
            topk_percent=config.topk_percent,
            batch_size=config.batch_size,
        )
        assert torch.equal(masking.load_masks(two.masks_path("iter1")), expected.masks)
        # The training split's ERM predictions kept from the ranks' saliency passes, joined in row order.
        np.testing.assert_allclose(two.predictions("train")["probs_erm"], expected.probs, rtol=0, atol=1e-5)
        assert not [p for p in two.file("masks").iterdir() if ".rank" in p.name]  # shares removed
        # Each run's random masks follow from its own saliency masks' areas and the seed.
        areas = masking.load_packed_masks(two.masks_path("iter1")).areas()
        blocks = masking.RandomBlocks(
            areas, expected.masks.shape[1:], torch.Generator().manual_seed(config.seed + 7919)
        )
        assert torch.equal(masking.load_masks(two.masks_path("randmask")), blocks[torch.arange(len(areas))])


def rank_pids(run_id: str) -> dict[int, int]:
    """The pids of the ranks working on ``run_id`` (the launcher marks their environment with it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(
                item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item
            )
        except OSError:
            continue
        if environ.get("MASKTUNE_RUN_LOCK_HELD") == run_id and "RANK" in environ:
            found[int(environ["RANK"])] = int(entry.name)
    return found


def wait_for_erm(root: Path, launcher: subprocess.Popen[str]) -> Run:
    """The run, once both ranks are a little way into ERM."""
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline and launcher.poll() is None, "the run never reached ERM"
        runs = RunStore(root).list() if root.is_dir() else []
        status = runs[0].raw_status() if runs else {}
        started = status.get("stage") == "erm" and (status.get("progress") or 0) > 0.02
        if started and len(rank_pids(runs[0].id)) == 2:
            return runs[0]
        time.sleep(0.2)


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_ends_the_run_within_a_minute_and_resume_finishes_it(
    image_dir: Path, tmp_path: Path, victim: int
) -> None:
    root = tmp_path / "runs"
    launcher = cli(
        "run", *flags(image_dir, "small-cnn", nproc=2, epochs=6), "--runs-dir", str(root), wait=False
    )
    try:
        run = wait_for_erm(root, launcher)
        pids = rank_pids(run.id)
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()
        while run.status()["state"] == "running":
            assert time.monotonic() - killed < 60, "the run still reads running a minute after the kill"
            time.sleep(0.5)
        assert run.status()["state"] in ("failed", "interrupted"), run.status()
        launcher.wait(timeout=WAIT_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    result = cli("resume", run.id, "--runs-dir", str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.status()["state"] == "done" and run.metrics() is not None


def test_cancel_stops_every_rank_and_reads_cancelled(image_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # Long enough that the cancel, a second or two after ERM starts, lands inside it.
    options = flags(image_dir, "small-cnn", nproc=2, epochs=60)
    launcher = cli("run", *options, "--runs-dir", str(root), wait=False)
    try:
        run = wait_for_erm(root, launcher)
        pids = rank_pids(run.id)
        result = cli("cancel", run.id, "--runs-dir", str(root))
        assert result.returncode == 0, result.stderr
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    status = run.raw_status()
    assert (status["state"], status["stage"]) == ("cancelled", "erm")  # written by rank 0, not inferred
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
