"""Background jobs: each run is its own OS process (``python -m masktune_core resume RUN --queue``).

Disk is the source of truth: the process writes status.json, and liveness is checked from its pid and
kernel start time, so a new dashboard process finds running jobs again and spots dead ones. Jobs queue
on slot lock files in the runs directory (one slot unless MASKTUNE_MAX_JOBS says more); the kernel
drops a dead job's lock, so a crash never blocks the queue. This module is the one home of the queue's
order, of a job process taking a run over, and of stopping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import masktune_core
from masktune_core.config import RunConfig
from masktune_core.errors import RunStoreError
from masktune_core.runs import (
    ACTIVE_STATES,
    Run,
    RunStore,
    file_lock,
    now_iso,
    process_alive,
    process_start_time,
)

# Seconds a job has to stop after SIGTERM before it is killed: a job notices the signal between training
# steps (well under a second), but one stuck in a system call (loading data, say) never would.
CANCEL_GRACE_S = 10.0


def max_jobs() -> int:
    try:
        return max(int(os.environ.get("MASKTUNE_MAX_JOBS", "1")), 1)
    except ValueError:
        return 1


def submit(store: RunStore, config: RunConfig) -> Run:
    """Create a queued run for ``config`` and start its process; returns at once."""
    run = store.create(config.resolved().to_dict())
    with _start_lock(run):
        _spawn(run, store)
    return run


def start(run: Run, store: RunStore) -> None:
    """Start the process that works through ``run``'s unfinished stages (resume after a failure,
    a cancel or a crash). RunStoreError if the run is already queued or running, so two browser tabs
    clicking at once start one process, not two."""
    with _start_lock(run):
        status = run.status()
        if status.get("state") in ACTIVE_STATES:
            raise RunStoreError(f"run {run.id} is already {status['state']}")
        run.load_config()  # a damaged config.json fails here, in the caller's hands, not in the job
        run.log(f"resume requested after state {status['state']!r} at stage {status.get('stage')!r}")
        _spawn(run, store)


def _start_lock(run: Run) -> contextlib.AbstractContextManager[None]:
    """Held while checking a run's state and starting its process (threads of one server included)."""
    return file_lock(run.file(".start.lock"))


def package_root() -> Path:
    """The folder holding the ``masktune_core`` package that is running now."""
    return Path(masktune_core.__file__).resolve().parent.parent


def job_environment() -> dict[str, str]:
    """The environment of a job process: this one's, with the package's own root first on PYTHONPATH, so
    the job imports the same code as its launcher whatever the launcher's working directory (a dashboard
    started as ``streamlit run /path/to/app.py`` from elsewhere) and whatever else is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(package_root()), env.get("PYTHONPATH"))))
    return env


def _spawn(run: Run, store: RunStore) -> None:
    run.update_status(state="queued", error=None, cancel_requested=False, queued_at=now_iso())
    command = [
        sys.executable,
        "-P",  # no working directory on sys.path: the package comes from PYTHONPATH (job_environment)
        "-m",
        "masktune_core",
        "resume",
        run.id,
        "--runs-dir",
        str(store.root.resolve()),
        "--queue",
    ]
    try:
        with open(run.file("process.txt"), "ab") as output:
            # The working directory stays the launcher's, so relative paths in the config (--data-dir)
            # mean what they meant where the run was asked for; imports do not depend on it.
            process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel reaches any worker it starts
                env=job_environment(),
            )
    except OSError as err:
        run.update_status(state="failed", error=f"could not start the job process: {err}")
        raise RunStoreError(
            f"run {run.id}: could not start the job process ({err.strerror or err})"
        ) from None
    run.update_status(pid=process.pid, pid_start=process_start_time(process.pid))


def cancel(run: Run, *, grace_s: float | None = None, wait: bool = False) -> None:
    """Stop a queued or running run: SIGTERM to its job, then SIGKILL if it is still alive after
    ``grace_s`` seconds (default ``CANCEL_GRACE_S``), in a background thread so a page does not block
    (``wait`` joins it).

    Only the pid status.json records for this run is signalled, checked against its kernel start time;
    never this process (a run created here, such as a dashboard's queued run before its job starts,
    lists this process until a job takes it over) and never this process's group. If the job dies
    before it can say so, the ``cancel_requested`` mark makes the run read as cancelled.
    """
    with _start_lock(run):
        status = run.raw_status()
        if status.get("state") not in ACTIVE_STATES:
            return
        pid, pid_start = status.get("pid"), status.get("pid_start")
        if not process_alive(pid, pid_start) or pid == os.getpid():
            run.update_status(state="cancelled", error="cancelled by the user", finished=now_iso())
            return
        run.update_status(cancel_requested=True)
    _signal_job(pid, signal.SIGTERM)
    grace_s = CANCEL_GRACE_S if grace_s is None else grace_s
    escalation = threading.Thread(target=_kill_after, args=(run, pid, pid_start, grace_s), daemon=True)
    escalation.start()
    if wait:
        escalation.join()


def _signal_job(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # A job started here leads its own process group (its workers included): signal the group. A CLI
        # run in a terminal may not lead one, and a group this process belongs to (the server's, the
        # shell's) is never signalled whole: then the job's pid alone.
        if os.getpgid(pid) == pid != os.getpgrp():
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _kill_after(run: Run, pid: int, pid_start: str | None, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not process_alive(pid, pid_start):
            return
        time.sleep(0.1)
    if not process_alive(pid, pid_start):
        return
    run.log(f"the job process {pid} did not stop within {grace_s:g} s of the cancel; killed")
    _signal_job(pid, signal.SIGKILL)
    run.update_status(state="cancelled", error="cancelled by the user (killed)", finished=now_iso())


# ---------------------------------------------------------------------- inside the job process
def stop_on_sigterm() -> Callable[[], bool]:
    """Make SIGTERM set a flag the stages poll between steps, so a cancel ends as 'cancelled', cleanly.
    Returns the flag's reader."""
    flag = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    return flag.is_set


def work_on(
    run: Run,
    store: RunStore,
    *,
    queue: bool,
    should_stop: Callable[[], bool],
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Take ``run`` over in this process and work through its unfinished stages; with ``queue``, wait
    for its turn and a free slot first. Returns the final status.

    Under torchrun only rank 0 owns the run (its lock and status); the other ranks just work. A run of
    ``nproc`` > 1 started outside torchrun launches torchrun here, its ranks resuming the run.
    """
    from masktune_core import distributed
    from masktune_core.pipeline import execute

    def work() -> dict[str, Any]:
        nproc = int(run.config().get("nproc") or 1)
        if nproc > 1 and not distributed.launched():
            return distributed.launch(run, nproc)
        return execute(run, should_stop=should_stop, echo=echo)

    if not distributed.is_main():
        return work()
    # The launcher that started torchrun holds the lock already; rank 0 must not wait for it.
    held = os.environ.get(distributed.LOCK_HELD_ENV) == run.id
    with contextlib.nullcontext() if held else run.exclusive():
        previous = run.status()
        done = ", ".join(previous.get("stages_done") or []) or "none"
        if previous.get("state") == "queued":  # started by submit/start, which logged why
            run.log(f"job process {os.getpid()} started; stages already done: {done}")
        else:
            run.log(
                f"resumed after state {previous.get('state')!r} at stage {previous.get('stage')!r}; "
                f"stages already done: {done}"
            )
        # This process owns the run from here on; a cancel that reached it is in ``should_stop``.
        owner = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid()), "cancel_requested": False}
        try:
            if queue:
                queued_at = previous.get("queued_at") if previous.get("state") == "queued" else None
                run.update_status(state="queued", queued_at=queued_at or now_iso(), **owner)
                with queue_slot(run, store, should_stop):
                    return work()
            run.update_status(**owner)
            return work()
        except KeyboardInterrupt:
            return run.update_status(state="cancelled", error="cancelled by the user", finished=now_iso())


@contextlib.contextmanager
def queue_slot(run: Run, store: RunStore, should_stop: Callable[[], bool]) -> Iterator[None]:
    """Wait until ``run`` is the oldest queued run and a slot is free, then hold the slot."""
    slots = store.root / ".slots"
    try:
        slots.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunStoreError(f"{slots}: cannot create the job-slot folder ({err.strerror or err})") from None
    while True:
        if should_stop():
            raise KeyboardInterrupt
        if _first_in_line(run, store):
            for k in range(max_jobs()):
                slot = contextlib.ExitStack()
                try:
                    slot.enter_context(file_lock(slots / f"slot-{k}.lock", wait=False))
                except BlockingIOError:
                    continue
                with slot:
                    yield
                return
        time.sleep(0.5)


def queue_order(runs: list[Run]) -> list[Run]:
    """The queued runs among ``runs`` whose job is alive, in the order the job slots serve them: by the
    time they were queued, then by id."""
    queued = []
    for run in runs:
        status = run.status()  # a dead job's run reads as interrupted, not queued
        if status.get("state") == "queued":
            queued.append(((status.get("queued_at") or "", run.id), run))
    return [run for _, run in sorted(queued, key=lambda item: item[0])]


def queue_positions(runs: list[Run]) -> dict[str, int]:
    """1-based place in line of each queued run among ``runs``."""
    return {run.id: place for place, run in enumerate(queue_order(runs), start=1)}


def _first_in_line(run: Run, store: RunStore) -> bool:
    line = queue_order(store.list())
    return not line or line[0].id == run.id
