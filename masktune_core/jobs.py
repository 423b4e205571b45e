"""Background jobs: each run is its own OS process (``python -m masktune_core resume RUN --queue``).

Disk is the source of truth: the process writes status.json, and liveness is checked from its pid and
kernel start time, so a new dashboard process finds running jobs again and spots dead ones. Jobs queue
on slot lock files in the runs directory (one slot unless MASKTUNE_MAX_JOBS says more); the kernel
drops a dead job's lock, so a crash never blocks the queue.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def _spawn(run: Run, store: RunStore) -> None:
    run.update_status(state="queued", error=None, cancel_requested=False, queued_at=now_iso())
    command = [
        sys.executable,
        "-m",
        "masktune_core",
        "resume",
        run.id,
        "--runs-dir",
        str(store.root),
        "--queue",
    ]
    try:
        with open(run.file("process.txt"), "ab") as output:
            process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel reaches any worker it starts
                cwd=Path.cwd(),
            )
    except OSError as err:
        run.update_status(state="failed", error=f"could not start the job process: {err}")
        raise RunStoreError(
            f"run {run.id}: could not start the job process ({err.strerror or err})"
        ) from None
    run.update_status(pid=process.pid, pid_start=process_start_time(process.pid))


def cancel(run: Run) -> None:
    """Stop a queued or running run. The job notices the signal between steps and records ``cancelled``;
    if it dies first (still starting up, say), the ``cancel_requested`` mark makes it read as cancelled."""
    with _start_lock(run):
        status = run.raw_status()
        if status.get("state") not in ACTIVE_STATES:
            return
        pid = status.get("pid")
        if not process_alive(pid, status.get("pid_start")):
            run.update_status(state="cancelled", error="cancelled by the user", finished=now_iso())
            return
        run.update_status(cancel_requested=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # A job started here leads its own process group; a CLI run in a terminal does not, and
        # signalling its group would hit the shell.
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)


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
