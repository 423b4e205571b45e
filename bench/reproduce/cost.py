"""The cost model: each run's time from its stages and split sizes, and the grid that fits the budget."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bench.reproduce.grid import (
    LARGE_DATASETS,
    SEEDS,
    SELECTIVE_DATASETS,
    SHORTCUT_DATASETS,
    Grid,
    Job,
    make_jobs,
    quick_grid,
)
from masktune_core.config import RunConfig

BUDGET_S = 75 * 60  # planning target, kept well under the 90 minutes the full page may take


# Seconds per image on this project's 2-core machine: the largest per-stage single-thread CPU times measured
# on biased-digits and fashion-mnist. Two threads on an idle machine are no slower, so the estimate is an
# upper bound there; on a shared machine the wall time can be several times longer (see the docstring).
COST_TRAIN = 1.7e-3  # one training step's share per image (ERM epoch, finetune epoch)


COST_CAM = 0.9e-3  # one XGradCAM mask per image


COST_PREDICT = 0.7e-3  # one model's prediction per image (validation each epoch, evaluation)


COST_RUN_OVERHEAD = 5.0  # loading data, checkpoints and writing files, per run


def estimate_run_seconds(config: dict[str, Any], sizes: dict[str, int], erm_reused: bool) -> float:
    """A run's time from its stages (see pipeline.plan_stages) and its split sizes."""
    train, val = sizes["train"], sizes["val"]
    evaluated = sum(n for split, n in sizes.items() if split != "train")
    epoch = train * COST_TRAIN + val * COST_PREDICT
    iterations = int(config["iterations"])
    models = 1 + iterations + int(bool(config["randmask"]))
    seconds = COST_RUN_OVERHEAD + iterations * (train * COST_CAM + epoch)
    seconds += 0.0 if erm_reused else int(config["epochs"]) * epoch
    seconds += epoch if config["randmask"] else 0.0
    # The evaluation also predicts the training split, except for the models whose saliency pass (one
    # per iteration: ERM, then each earlier MaskTune model) already kept those predictions.
    seconds += (models - iterations) * train * COST_PREDICT
    return seconds + models * evaluated * COST_PREDICT


def split_sizes(jobs: Iterable[Job]) -> dict[str, dict[str, int]]:
    """Split sizes per dataset, from building each dataset once (this also fails early on missing data)."""
    from masktune_core.data import build_dataset

    sizes: dict[str, dict[str, int]] = {}
    for job in jobs:
        if job.dataset not in sizes:
            bundle = build_dataset(job.dataset, RunConfig.from_dict(job.config).data_options())
            sizes[job.dataset] = {name: len(split) for name, split in bundle.splits.items()}
    return sizes


def estimate(jobs: Sequence[Job], sizes: dict[str, dict[str, int]]) -> float:
    return sum(estimate_run_seconds(j.config, sizes[j.dataset], j.erm_from is not None) for j in jobs)


def full_grid(
    sizes_of: Callable[[Grid], dict[str, dict[str, int]]], workers: int = 1
) -> tuple[Grid, list[str]]:
    """All datasets with every seed, minus seeds of the large datasets while the estimate exceeds the budget.

    The estimate counts single-threaded seconds, so ``workers`` runs at a time divide it.

    Returns the grid and one note per reduction, for the page.
    """
    seeds = {d: SEEDS for d in (*SHORTCUT_DATASETS, *SELECTIVE_DATASETS)}

    def grid() -> Grid:
        return Grid(
            {d: seeds[d] for d in SHORTCUT_DATASETS},
            {d: seeds[d] for d in SELECTIVE_DATASETS},
            SEEDS,
            {},
        )

    sizes = sizes_of(grid())
    per_seed = {j.dataset: estimate([j], sizes) for j in make_jobs(grid()) if j.study != "ablation"}
    notes = []
    while estimate(make_jobs(grid()), sizes) / workers > BUDGET_S:
        reducible = [d for d in LARGE_DATASETS if len(seeds[d]) > 1]
        if not reducible:
            break
        # The large dataset with the most seeds loses one (the costlier on a tie), so both keep as many as
        # the budget allows.
        dataset = max(reducible, key=lambda d: (len(seeds[d]), per_seed[d]))
        seeds[dataset] = seeds[dataset][:-1]
    for dataset in LARGE_DATASETS:
        if seeds[dataset] != SEEDS:
            notes.append(
                f"{dataset} ran with seed(s) {', '.join(map(str, seeds[dataset]))} only, not {len(SEEDS)}: "
                f"its {sizes[dataset]['train']:,} training images would push the whole page past the "
                f"{BUDGET_S // 60}-minute planning budget on this 2-core machine, and the engine has no "
                "subsample option for it."
            )
    return grid(), notes


def plan(quick: bool, workers: int = 1) -> tuple[list[Job], dict[str, float], list[str]]:
    """The jobs in order, each one's estimated seconds, and the page notes on what the budget cut."""
    sizes: dict[str, dict[str, int]] = {}

    def sizes_of(grid: Grid) -> dict[str, dict[str, int]]:
        sizes.update(split_sizes(j for j in make_jobs(grid) if j.dataset not in sizes))
        return sizes

    if quick:
        grid, notes = quick_grid(), []
        sizes_of(grid)
    else:
        grid, notes = full_grid(sizes_of, workers)
    jobs = make_jobs(grid)
    estimated = {
        j.name: estimate_run_seconds(j.config, sizes[j.dataset], j.erm_from is not None) for j in jobs
    }
    return jobs, estimated, notes
