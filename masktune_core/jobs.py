"""Background jobs: each run is its own OS process (``python -m masktune_core resume RUN --queue``).

Disk is the source of truth: the process writes status.json, and liveness is checked from its pid and
kernel start time, so a new dashboard process finds running jobs again and spots dead ones. Jobs queue
on slot lock files in the runs directory (one slot unless MASKTUNE_MAX_JOBS says more); the kernel
drops a dead job's lock, so a crash never blocks the queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from masktune_core.config import RunConfig
from masktune_core.errors import RunStoreError
from masktune_core.runs import ACTIVE_STATES, Run, RunStore, now_iso, process_alive, process_start_time


def max_jobs() -> int:
    try:
        return max(int(os.environ.get("MASKTUNE_MAX_JOBS", "1")), 1)
    except ValueError:
        return 1


def submit(store: RunStore, config: RunConfig) -> Run:
    """Create a queued run for ``config`` and start its process; returns at once."""
    run = store.create(config.resolved().to_dict())
    start(run, store)
    return run


def start(run: Run, store: RunStore) -> None:
    """Start (or restart, for resume) the process that works through ``run``'s unfinished stages."""
    status = run.status()
    if status.get("state") in ACTIVE_STATES:
        raise RunStoreError(f"run {run.id} is already {status['state']}")
    run.update_status(state="queued", error=None, queued_at=now_iso())
    command = [sys.executable, "-m", "masktune_core", "resume", run.id, "--runs-dir", str(store.root), "--queue"]
    with open(run.file("process.txt"), "ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel reaches any worker it starts
            cwd=Path.cwd(),
        )
    run.update_status(pid=process.pid, pid_start=process_start_time(process.pid))


def cancel(run: Run) -> None:
    status = run.raw_status()
    pid = status.get("pid")
    if status.get("state") in ACTIVE_STATES and process_alive(pid, status.get("pid_start")):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        return
    if status.get("state") in ACTIVE_STATES:
        run.update_status(state="cancelled", error="cancelled by the user", finished=now_iso())


@contextlib.contextmanager
def queue_slot(run: Run, store: RunStore, should_stop: Callable[[], bool]) -> Iterator[None]:
    """Wait until ``run`` is the oldest queued run and a slot is free, then hold the slot."""
    slots = store.root / ".slots"
    slots.mkdir(parents=True, exist_ok=True)
    while True:
        if should_stop():
            raise KeyboardInterrupt
        if _first_in_line(run, store):
            for k in range(max_jobs()):
                handle = open(slots / f"slot-{k}.lock", "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                try:
                    yield
                finally:
                    handle.close()
                return
        time.sleep(0.5)


def _first_in_line(run: Run, store: RunStore) -> bool:
    mine = (run.raw_status().get("queued_at") or "", run.id)
    for other in store.list():
        if other.id == run.id:
            continue
        status = other.raw_status()
        if status.get("state") != "queued" or not process_alive(status.get("pid"), status.get("pid_start")):
            continue
        if (status.get("queued_at") or "", other.id) < mine:
            return False
    return True
