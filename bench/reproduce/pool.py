"""Running the grid: each job's run made or reused in the run store, one after the other or in a pool of
single-threaded worker processes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.configs import stored_config
from bench.reproduce.analysis import Result
from bench.reproduce.grid import Job
from masktune_core.runs import LAST_ERM_STATE, Run, RunStore, atomic_path


def find_run(store: RunStore, config: dict[str, Any]) -> Run | None:
    """A run in ``store`` made with exactly ``config`` (finished first), so a rerun resumes the grid."""
    matches = [run for run in store.list() if stored_config(run) == config]
    matches.sort(key=lambda run: run.status().get("state") != "done")
    return matches[0] if matches else None


def seed_erm(run: Run, source: Run) -> None:
    """Start ``run`` from ``source``'s ERM checkpoint (and ERM's last training state, where the source
    kept it): the pipeline resumes after a stage listed as done."""
    for name in ("erm", LAST_ERM_STATE):
        if name == "erm" or source.checkpoint_path(name).exists():
            with atomic_path(run.checkpoint_path(name)) as tmp:
                shutil.copyfile(source.checkpoint_path(name), tmp)
    run.update_status(stages_done=["erm"])
    run.log(f"ERM checkpoint copied from run {source.id}")


def execute_job(store: RunStore, job: Job, finished: dict[str, Run]) -> tuple[Run, bool]:
    """Run (or reuse) one job; returns the run and whether it was reused. SystemExit if it fails."""
    from masktune_core.pipeline import execute

    run = find_run(store, job.config)
    if run is not None and run.status().get("state") == "done":
        return run, True
    if run is None:
        run = store.create(job.config)
    if job.erm_from is not None and "erm" not in run.raw_status().get("stages_done", []):
        seed_erm(run, finished[job.erm_from])
    status = execute(run, echo=lambda line: print(f"  {job.name} {line}", flush=True))
    if status.get("state") != "done":
        raise SystemExit(f"run {run.id} ({job.name}) ended {status.get('state')}: {status.get('error')}")
    return run, False


def _execute_in_worker(root: str, job: Job, finished: dict[str, str]) -> tuple[str, bool, float]:
    """``execute_job`` in a worker process, on one thread (see ``run_grid``); paths cross the process line."""
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    run, was_reused = execute_job(RunStore(Path(root)), job, {n: Run(Path(p)) for n, p in finished.items()})
    return str(run.path), was_reused, time.monotonic() - started


def run_grid(
    store: RunStore, jobs: Sequence[Job], estimated: dict[str, float], workers: int = 1
) -> tuple[list[Result], int]:
    """Execute every job, printing progress and an ETA scaled by the time measured so far.

    With ``workers`` > 1 the jobs run in that many single-threaded processes, in two waves: the runs that
    train their own ERM, then the ablations that start from one of them. On 2 cores two single-threaded
    runs finish sooner than one after the other with two threads each, since these small models keep two
    threads waiting on each other.
    """
    finished: dict[str, Run] = {}
    reused = 0
    spent, spent_estimate = 0.0, 0.0
    remaining = sum(estimated.values())

    def record(job: Job, run: Run, was_reused: bool, took: float) -> None:
        nonlocal spent, spent_estimate, remaining, reused
        reused += was_reused
        remaining -= estimated[job.name]
        if not was_reused:
            spent, spent_estimate = spent + took, spent_estimate + estimated[job.name]
        scale = spent / spent_estimate if spent_estimate else 1.0
        done = "reused" if was_reused else f"{took / 60:.1f} min"
        left = remaining * scale / 60 / max(workers, 1)
        print(f"[{len(finished) + 1}/{len(jobs)}] {job.name}: {done}, about {left:.1f} min left", flush=True)
        finished[job.name] = run

    if workers <= 1:
        for number, job in enumerate(jobs, 1):
            print(
                f"[{number}/{len(jobs)}] {job.name}: estimated {estimated[job.name] / 60:.1f} min", flush=True
            )
            started = time.monotonic()
            run, was_reused = execute_job(store, job, finished)
            record(job, run, was_reused, time.monotonic() - started)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        waves = [[j for j in jobs if j.erm_from is None], [j for j in jobs if j.erm_from is not None]]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for wave in waves:
                paths = {name: str(run.path) for name, run in finished.items()}
                futures = {pool.submit(_execute_in_worker, str(store.root), j, paths): j for j in wave}
                for future in as_completed(futures):
                    path, was_reused, took = future.result()
                    record(futures[future], Run(Path(path)), was_reused, took)
    results = [Result.load(job, finished[job.name]) for job in jobs]
    return results, reused
