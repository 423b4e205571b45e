"""The run store: one directory per run, the contract between the engine and the pages.

runs/<run_id>/
  config.json     the validated RunConfig (resolved: no recipe option left as None)
  status.json     state, stage, progress, eta_s, error, pid, timestamps, stages_done; replaced atomically
  events.jsonl    append-only curves; a reader skips a torn last line
  checkpoints/    erm.pt, masktune.pt, randmask.pt (state_dicts); erm_last.pt (resumable training state);
                  erm_final_state.pt (ERM's last training state, kept for --finetune-start last)
  masks/          bit-packed boolean masks of the training split, one file per iteration
  predictions/    <split>.npz: index, label, group, probs_<model> for each model
  metrics.json    per split, per model: accuracy, worst-group accuracy, per group, per class
  selective/      saved threshold sets (JSON)
  log.txt

Every JSON file is written to a temporary file and renamed, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from masktune_core.errors import RunStoreError

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# ERM's training state after its last epoch (weights, optimizer, scheduler), kept for --finetune-start last.
LAST_ERM_STATE = "erm_final_state"


def default_runs_dir() -> Path:
    return Path(os.environ.get("MASKTUNE_RUNS_DIR") or "runs")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- atomic files
def disk_error(path: Path, err: OSError) -> RunStoreError:
    """One line for a failed disk operation: what went wrong with which file, and what to do."""
    elsewhere = "use a writable runs folder (--runs-dir or MASKTUNE_RUNS_DIR)"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunStoreError(f"{path}: the disk is full; free some space, then resume the run")
    if err.errno == errno.EROFS:
        return RunStoreError(f"{path}: the file system is read-only; {elsewhere}")
    if err.errno in (errno.EACCES, errno.EPERM):
        return RunStoreError(f"{path}: permission denied; {elsewhere}")
    return RunStoreError(f"{path}: {err.strerror or err}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise disk_error(path, err) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync(tmp_path)
        os.replace(tmp_path, path)
        fsync(path.parent)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise disk_error(path, err) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fsync(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to the disk, so a rename survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, value: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(value, handle, indent=2, default=_json_default)


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the kernel drops it if the holder dies.

    With ``wait=False`` a lock held elsewhere raises BlockingIOError at once.
    """
    try:
        handle = open(path, "a+")  # noqa: SIM115 -- opened apart from the `with` to turn OSError into one line
    except OSError as err:
        raise disk_error(path, err) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield


def read_json(path: str | Path) -> Any | None:
    """The file's value, or None if it is absent or unreadable (a torn write from an older version)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError covers bad JSON and bytes that are not UTF-8
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------- process liveness
def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, start_time: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = process_start_time(pid)
    if current is None:
        return Path("/proc").is_dir() is False  # no /proc: trust os.kill
    if start_time is not None and current != start_time:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------------- one run
class Run:
    """A run directory. Reads never raise on a half-written run; writes are atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    # paths
    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def checkpoint_path(self, name: str) -> Path:
        return self.file("checkpoints", f"{name}.pt")

    def masks_path(self, name: str) -> Path:
        return self.file("masks", f"{name}.npz")

    def predictions_path(self, split: str) -> Path:
        return self.file("predictions", f"{split}.npz")

    # config / status / metrics
    def config(self) -> dict[str, Any]:
        """The stored config, or ``{}`` if unreadable: for display; ``load_config`` is for acting on it."""
        value = read_json(self.file("config.json"))
        return value if isinstance(value, dict) else {}

    def load_config(self) -> dict[str, Any]:
        """The stored config; RunStoreError naming the file if it is damaged, so a resume never falls back
        to default options and silently runs another experiment."""
        value = read_json(self.file("config.json"))
        if not isinstance(value, dict) or not value:
            path = self.file("config.json")
            raise RunStoreError(f"{path}: damaged or unreadable; this run cannot be resumed")
        return value

    def raw_status(self) -> dict[str, Any]:
        """status.json as written; if it is damaged, a status rebuilt from the files the stages left."""
        value = read_json(self.file("status.json"))
        return value if isinstance(value, dict) and "state" in value else self._recovered_status()

    def status(self) -> dict[str, Any]:
        """The status, with a dead process's queued/running state reported as ``interrupted`` (or as
        ``cancelled`` when a cancel was asked for and the process died before it could say so)."""
        status = self.raw_status()
        if status.get("state") not in ACTIVE_STATES or process_alive(
            status.get("pid"), status.get("pid_start")
        ):
            return status
        if status.get("cancel_requested"):
            return {**status, "state": "cancelled", "error": "cancelled by the user"}
        return {**status, "state": "interrupted", "error": status.get("error") or _dead_message(status)}

    def update_status(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into status.json. A lock makes the read-merge-write atomic, so a job and a
        dashboard (a cancel, a resume) writing at the same moment never drop each other's fields."""
        with file_lock(self.file(".status.lock")):
            status = {**self.raw_status(), **changes, "updated": now_iso()}
            write_json(self.file("status.json"), status)
        return status

    def _recovered_status(self) -> dict[str, Any]:
        """A status for a run whose status.json is damaged or missing: a stage whose outputs are on disk
        counts as done (every stage writes its outputs last, atomically), so a resume redoes only the rest."""
        done = []
        if self.checkpoint_path("erm").exists() and not self.checkpoint_path("erm_last").exists():
            done.append("erm")
        iterations = int(self.config().get("iterations") or 1)
        for i in range(1, iterations + 1):
            if self.masks_path(f"iter{i}").exists():
                done.append(f"masks_{i}")
            # The last iteration also copies its checkpoint to masktune.pt before it counts as done.
            if self.checkpoint_path(f"masktune_{i}").exists() and (
                i < iterations or self.checkpoint_path("masktune").exists()
            ):
                done.append(f"finetune_{i}")
        if self.checkpoint_path("randmask").exists():
            done.append("randmask")
        if self.file("metrics.json").is_file():
            done.append("evaluate")
        return {
            **_initial_status(),
            "state": "interrupted",
            "stages_done": done,
            "error": "status.json was damaged and has been rebuilt from the files on disk; "
            "resume the run to redo any stage it does not list as done",
        }

    def metrics(self) -> dict[str, Any] | None:
        value = read_json(self.file("metrics.json"))
        return value if isinstance(value, dict) else None

    # events
    def append_event(self, event: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **event}, default=_json_default)
        _append_line(self.file("events.jsonl"), line)

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.file("events.jsonl").read_text().splitlines()
        except OSError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a crash mid-write
        return events

    def log(self, message: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        _append_line(self.file("log.txt"), f"[{stamp}] {message}")

    def log_text(self) -> str:
        try:
            return self.file("log.txt").read_text()
        except OSError:
            return ""

    # predictions
    def predictions(self, split: str) -> dict[str, np.ndarray] | None:
        path = self.predictions_path(split)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    def save_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.predictions_path(split)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    def prediction_splits(self) -> list[str]:
        return sorted(p.stem for p in self.file("predictions").glob("*.npz"))

    # saved threshold sets
    def threshold_sets(self) -> dict[str, dict[str, Any]]:
        sets = {}
        for path in sorted(self.file("selective").glob("*.json")):
            value = read_json(path)
            if isinstance(value, dict):
                sets[path.stem] = value
        return sets

    def save_threshold_set(self, name: str, value: dict[str, Any]) -> None:
        check_name(name, "threshold set name")
        write_json(self.file("selective", f"{name}.json"), value)

    # locking
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run's lock file while working on it, so two processes never run one run at once."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self.file(".lock"), wait=False))
            except BlockingIOError:
                raise RunStoreError(f"run {self.id} is already being worked on by another process") from None
            yield


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline in one write. If a crash tore the previous line, start a fresh line
    first, so the torn fragment stays the only line a reader skips instead of spoiling this one too."""
    data = (line + "\n").encode()
    try:
        with open(path, "ab+") as handle:
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    data = b"\n" + data
            handle.write(data)
    except OSError as err:
        raise disk_error(path, err) from None


def _dead_message(status: dict[str, Any]) -> str:
    stage = status.get("stage")
    where = f"while in stage '{stage}'" if stage else "before its first stage"
    return f"the job process stopped {where} (killed, or the machine restarted); resume it"


def check_name(name: str, what: str = "run id") -> str:
    if not isinstance(name, str) or not _RUN_ID.match(name) or ".." in name:
        raise RunStoreError(
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' (no '..', no '/')"
        )
    return name


def slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:40] or "run"


# ---------------------------------------------------------------------- the store
class RunStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    def get(self, run_id: str) -> Run:
        check_name(run_id)
        path = self.root / run_id
        if not (path / "config.json").is_file():
            raise RunStoreError(f"no run {run_id!r} in {self.root}")
        return Run(path)

    def create(self, config: dict[str, Any]) -> Run:
        """Make a new run directory holding ``config`` and a queued status."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{slugify(config.get('name') or config['dataset'])}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            run_id, suffix = base, 1
            while True:
                try:
                    (self.root / run_id).mkdir()
                    break
                except FileExistsError:
                    suffix += 1
                    run_id = f"{base}-{suffix}"
        except OSError as err:
            raise disk_error(self.root, err) from None
        run = Run(self.root / run_id)
        try:
            for sub in ("checkpoints", "masks", "predictions", "selective"):
                run.file(sub).mkdir()
            # The creating process owns the queued run until a job process takes it over, so the run is
            # never shown as interrupted in between.
            pid = os.getpid()
            write_json(
                run.file("status.json"),
                {**_initial_status(), "pid": pid, "pid_start": process_start_time(pid)},
            )
            write_json(run.file("config.json"), config)  # written last: a run exists once its config does
        except OSError as err:
            shutil.rmtree(run.path, ignore_errors=True)
            raise disk_error(run.path, err) from None
        except BaseException:
            shutil.rmtree(run.path, ignore_errors=True)
            raise
        return run

    def list(self) -> list[Run]:
        if not self.root.is_dir():
            return []
        try:
            paths = list(self.root.iterdir())
        except OSError as err:
            raise disk_error(self.root, err) from None
        # Names outside the run-id pattern are never runs: ".deleting-*" folders and temporary files.
        runs = [Run(p) for p in paths if _RUN_ID.match(p.name) and (p / "config.json").is_file()]
        return sorted(runs, key=lambda run: run.id, reverse=True)

    def delete(self, run_id: str) -> None:
        run = self.get(run_id)
        # Holding the run's lock keeps a CLI process from starting work on it mid-delete.
        with run.exclusive():
            state = run.status().get("state")
            if state in ACTIVE_STATES:
                raise RunStoreError(f"run {run_id} is still {state}; cancel it first")
            # Rename first so a half-deleted directory is never listed as a run.
            trash = self.root / f".deleting-{run_id}-{os.getpid()}"
            try:
                os.replace(run.path, trash)
            except OSError as err:
                raise disk_error(run.path, err) from None
        shutil.rmtree(trash, ignore_errors=True)


def _initial_status() -> dict[str, Any]:
    return {
        "state": "queued",
        "stage": None,
        "progress": 0.0,
        "eta_s": None,
        "error": None,
        "pid": None,
        "pid_start": None,
        "created": now_iso(),
        "started": None,
        "finished": None,
        "stages_done": [],
        "skipped_files": [],
    }
