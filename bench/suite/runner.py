"""Run the product's CLI on every suite dataset, seed and variant, one subprocess per run.

A variant is a name and the extra ``run`` flags it adds (``VARIANTS``). A run whose stored config equals the
config the CLI would make for the same flags, and which finished, is reused; an interrupted or failed one is
resumed. So a rerun only does what is missing, and a change of the product's defaults starts new runs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.configs import stored_config
from bench.reproduce.pool import seed_erm
from bench.suite.generate import CARD, read_card
from masktune_core.config import RunConfig
from masktune_core.errors import ConfigError, DataError
from masktune_core.runs import LAST_ERM_STATE, Run, RunStore

ROOT = Path(__file__).resolve().parents[2]
BASE_FLAGS = ("--backbone", "small-cnn", "--image-size", "32")
# name -> the flags appended to BASE_FLAGS. "default" is the product's own defaults; the study's variants
# change one option at a time from "one-round", a single round of candidates from the kept ERM checkpoint
# (each must be a flag ``python -m masktune_core run`` accepts).
ONE_ROUND = ("--finetune-start", "best", "--iterations", "1")
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "one-round": ONE_ROUND,
    "start-last": ("--finetune-start", "last", "--iterations", "1"),
    "start-both": ("--finetune-start", "best,last", "--iterations", "1"),
    "one-epoch-black": (
        *ONE_ROUND,
        "--finetune-fills",
        "black",
        "--finetune-epochs",
        "1",
        "--finetune-checks",
        "1",
    ),
    "finetune-lr-1e-4": (*ONE_ROUND, "--finetune-lrs", "0.0001"),
    "topk": (*ONE_ROUND, "--threshold-rule", "topk"),
    "dilate-2": (*ONE_ROUND, "--mask-dilation", "2"),
    "gradcam": (*ONE_ROUND, "--cam-method", "gradcam"),
}
# Options that act only after ERM. Runs that differ in nothing else train the same ERM model (ERM is
# deterministic per seed), so a run starts from another's ERM checkpoint and costs its masks and finetunes
# alone; a run whose candidates start from ERM's last state needs a source that kept it.
AFTER_ERM = {
    "finetune_lr",
    "finetune_lrs",
    "finetune_fills",
    "finetune_epochs",
    "finetune_checks",
    "finetune_selection",
    "finetune_start",
    "iterations",
    "cam_method",
    "threshold_rule",
    "topk_percent",
    "mask_dilation",
    "fill",
    "randmask",
    "name",
    "study",
}
RESUMABLE = ("interrupted", "failed", "cancelled")


@dataclass(frozen=True)
class Job:
    folder: Path  # a generated dataset (holds card.json)
    dataset: str  # the product's --dataset name for its layout
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"suite-{self.folder.name}-{self.variant}-s{self.seed}"

    def flags(self) -> list[str]:
        """The ``run`` flags of this job, without ``--runs-dir`` (the store is not part of the config)."""
        return [
            "--dataset",
            self.dataset,
            "--data-dir",
            str(self.folder.resolve()),
            *BASE_FLAGS,
            "--seed",
            str(self.seed),
            "--name",
            self.name,
            *VARIANTS[self.variant],
        ]


def parse_seeds(text: str, field: str = "seeds") -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(seed < 0 for seed in seeds):
        raise ConfigError(field, f"expected comma-separated whole numbers >= 0, got {text!r}")
    return seeds


def parse_variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise ConfigError(
            "variants",
            f"unknown variant {unknown[0] if unknown else text!r}; choose from {', '.join(VARIANTS)}",
        )
    return names


def dataset_folders(data: Path, only: list[str] | None = None) -> list[Path]:
    """The generated datasets under ``data`` (folders holding a card), sorted; DataError if none."""
    if not data.is_dir():
        raise DataError(
            str(data), "suite data folder not found (write it with: python -m bench.suite generate)"
        )
    folders = sorted(path for path in data.iterdir() if (path / CARD).is_file())
    if only:
        missing = sorted(set(only) - {folder.name for folder in folders})
        if missing:
            raise DataError(str(data), f"no dataset {missing[0]!r} here")
        folders = [folder for folder in folders if folder.name in only]
    if not folders:
        raise DataError(str(data), "holds no suite dataset (no sub-folder with card.json)")
    return folders


def make_jobs(folders: list[Path], seeds: list[int], variants: list[str]) -> list[Job]:
    """Variant by variant, in the order given, so a study stopped early has whole variants."""
    return [
        Job(folder, read_card(folder)["dataset"], variant, seed)
        for variant in variants
        for folder in folders
        for seed in seeds
    ]


def expected_config(job: Job) -> dict[str, Any]:
    """The config ``python -m masktune_core run`` stores for ``job.flags()``: parsed by the CLI's own parser
    and resolved as its ``run`` command does, so the comparison follows the product's defaults."""
    from masktune_core.__main__ import build_parser

    args = build_parser().parse_args(["run", *job.flags()])
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    values = {key: value for key, value in given.items() if value is not None}
    return RunConfig.from_dict(values).resolved().to_dict()


def find_run(runs: list[Run], config: dict[str, Any]) -> Run | None:
    """The run made with exactly ``config`` but for its name (a label: a variant that ends up equal to
    another, as "one-round" to the defaults of before, is the same experiment); a finished one first."""

    def unnamed(values: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in values.items() if key != "name"}

    matches = [run for run in runs if unnamed(stored_config(run)) == unnamed(config)]
    matches.sort(key=lambda run: run.status().get("state") != "done")
    return matches[0] if matches else None


def _execute(job: Job, runs_dir: Path, existing: Run | None) -> tuple[str, float]:
    """Run or resume one job in a subprocess; (state, wall seconds). Output goes to a log beside the runs."""
    if existing is None:
        command = ["run", *job.flags(), "--runs-dir", str(runs_dir)]
    else:
        command = ["resume", existing.id, "--runs-dir", str(runs_dir)]
    logs = runs_dir / "suite-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(logs / f"{job.name}.log", "a", encoding="utf-8") as log:
        done = subprocess.run(
            [sys.executable, "-m", "masktune_core", *command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return ("done" if done.returncode == 0 else f"exit {done.returncode}"), time.perf_counter() - start


def run_jobs(jobs: list[Job], runs_dir: Path, workers: int = 1) -> dict[str, str]:
    """Every job not finished yet, ``workers`` subprocesses at a time; job name -> outcome.

    A new run starts from the ERM checkpoint of a finished run with the same ERM (``erm_source``) where
    there is one. Two waves: the "default" jobs, then the variants, which can then share their ERM."""
    if workers < 1:
        raise ConfigError("workers", f"must be at least 1, got {workers}")
    store = RunStore(runs_dir)
    stored = store.list()
    outcomes: dict[str, str] = {}
    todo: list[tuple[Job, Run | None]] = []
    for job in jobs:
        run = find_run(stored, expected_config(job))
        state = None if run is None else run.status().get("state")
        if state == "done":
            outcomes[job.name] = f"reused {run.id}"
        elif state in (None, *RESUMABLE):
            todo.append((job, run))
        else:  # queued or running in a live process: another runner owns it
            outcomes[job.name] = f"skipped: run {run.id} is {state} elsewhere"
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}", flush=True)

    def work(item: tuple[Job, Run | None]) -> None:
        job, run = item
        if run is None:
            run = _start_from_shared_erm(job, store)
        state, seconds = _execute(job, runs_dir, run)
        outcomes[job.name] = f"{state} in {seconds:.0f} s"
        print(f"{job.name}: {outcomes[job.name]}", flush=True)

    first = [item for item in todo if item[0].variant == "default"]
    for wave in (first, [item for item in todo if item[0].variant != "default"]):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, wave))
    return outcomes


def erm_source(config: dict[str, Any], runs: list[Run]) -> Run | None:
    """A finished run whose ERM is the one ``config`` would train (equal in every option but ``AFTER_ERM``),
    holding ERM's last training state where a candidate of ``config`` starts from it; None if none."""
    needs_last = "last" in str(config.get("finetune_start") or "")
    for run in runs:
        stored = stored_config(run)
        if any(stored.get(key) != value for key, value in config.items() if key not in AFTER_ERM):
            continue
        if run.status().get("state") != "done" or not run.checkpoint_path("erm").exists():
            continue
        if needs_last and not run.checkpoint_path(LAST_ERM_STATE).exists():
            continue
        return run
    return None


def _start_from_shared_erm(job: Job, store: RunStore) -> Run | None:
    """A new run of ``job`` holding the ERM checkpoint of a finished run with the same ERM, so ``resume``
    goes straight to the masks; None when there is no such run (the job then trains its own)."""
    config = expected_config(job)
    source = erm_source(config, store.list())
    if source is None:
        return None
    run = store.create(config)
    seed_erm(run, source)
    return run
