"""The run store: atomic files, torn files, names that try to escape, liveness, locks, disk errors.

Each test says what it injects and asserts what survives. None of them trains a model.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from masktune_core import runs
from masktune_core.errors import RunStoreError
from masktune_core.runs import Run, RunStore, check_name, process_alive, process_start_time, slugify

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": "biased-digits", "name": "unit", "iterations": 1}


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def spawn(code: str, *args: str, **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


@pytest.fixture
def run(store: RunStore) -> Run:
    return store.create(CONFIG)


def dead_pid() -> tuple[int, str | None]:
    """The pid and start time of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(process.pid)
    process.wait()
    return process.pid, start


# ---------------------------------------------------------------------- atomic writes
def test_crash_inside_an_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    """Injected: an exception while the new content is half written. Kept: the old file, no temp file."""
    path = tmp_path / "status.json"
    runs.write_json(path, {"state": "running", "stage": "erm"})
    with pytest.raises(KeyboardInterrupt), runs.atomic_path(path) as tmp:
        tmp.write_text('{"state": "do')
        raise KeyboardInterrupt
    assert runs.read_json(path) == {"state": "running", "stage": "erm"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize(
    ("err", "words"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
@pytest.mark.parametrize("failing", ["mkstemp", "replace"])
def test_disk_errors_become_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, words: str, failing: str
) -> None:
    """Injected: a full disk or a read-only folder (as root, chmod cannot simulate it) when creating
    the temporary file or when renaming it. Kept: the old file; the error names the file in one line."""
    path = tmp_path / "metrics.json"
    runs.write_json(path, {"old": True})

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(tempfile if failing == "mkstemp" else os, failing, fail)
    with pytest.raises(RunStoreError) as caught:
        runs.write_json(path, {"new": True})
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message
    monkeypatch.undo()
    assert runs.read_json(path) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_create_on_a_full_disk_leaves_no_half_made_run(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: ENOSPC while the new run's files are written. Kept: nothing; no run directory remains."""

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(RunStoreError, match="disk is full"):
        store.create(CONFIG)
    monkeypatch.undo()
    assert list(store.root.iterdir()) == []
    assert store.list() == []


def test_appends_on_a_read_only_folder_fail_with_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: EROFS on opening events.jsonl / log.txt. Kept: a RunStoreError naming the file."""
    real_open = open

    def read_only_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "a" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    with pytest.raises(RunStoreError, match=r"events\.jsonl: the file system is read-only"):
        run.append_event({"stage": "erm"})
    with pytest.raises(RunStoreError, match=r"log\.txt: the file system is read-only"):
        run.log("hello")


# ---------------------------------------------------------------------- torn files
def test_events_reader_skips_a_torn_last_line_and_appends_stay_readable(run: Run) -> None:
    """Injected: a crash mid-append leaves half a JSON line at the end of events.jsonl. Kept: every
    whole event, and the next append starts a fresh line instead of gluing itself to the fragment."""
    run.append_event({"stage": "erm", "kind": "step", "loss": 1.0})
    run.append_event({"stage": "erm", "kind": "step", "loss": 0.5})
    with open(run.file("events.jsonl"), "a") as handle:
        handle.write('{"stage": "erm", "kind": "st')
    assert [e["loss"] for e in run.events()] == [1.0, 0.5]
    run.append_event({"stage": "erm", "kind": "step", "loss": 0.25})
    assert [e["loss"] for e in run.events()] == [1.0, 0.5, 0.25]


def test_a_torn_status_file_is_rebuilt_from_the_run_outputs(run: Run) -> None:
    """Injected: status.json cut off mid-file, in a run whose ERM and masks had finished. Kept: a status
    that says interrupted, explains what happened, and lists the stages whose outputs are on disk."""
    run.update_status(state="running", stage="finetune_1", stages_done=["erm", "masks_1"])
    run.checkpoint_path("erm").write_bytes(b"weights")
    run.masks_path("iter1").write_bytes(b"masks")
    text = run.file("status.json").read_text()
    run.file("status.json").write_text(text[: len(text) // 2])

    status = run.status()
    assert status["state"] == "interrupted"
    assert status["stages_done"] == ["erm", "masks_1"]
    assert "status.json was damaged" in status["error"]
    # The next write replaces the torn file with a whole one.
    run.update_status(state="running")
    assert json.loads(run.file("status.json").read_text())["stages_done"] == ["erm", "masks_1"]


def test_status_rebuild_does_not_count_an_unfinished_erm(run: Run) -> None:
    """Injected: status.json emptied while ERM was mid-way (best checkpoint and training state both on
    disk). Kept: ERM is not counted as done, so a resume continues it from its training state."""
    run.checkpoint_path("erm").write_bytes(b"best so far")
    run.checkpoint_path("erm_last").write_bytes(b"training state")
    run.file("status.json").write_text("")
    assert run.status()["stages_done"] == []


def test_a_torn_config_is_refused_for_resume_but_still_shown(run: Run) -> None:
    """Injected: config.json cut off. Kept: display code gets {} instead of an exception, and
    ``load_config`` refuses, so a resume can never fall back to default options."""
    run.file("config.json").write_text('{"dataset": "biased-')
    assert run.config() == {}
    with pytest.raises(RunStoreError, match=r"config\.json: damaged or unreadable"):
        run.load_config()


@pytest.mark.parametrize("metrics", [b'{"splits": {', b"\xff\xfe binary", b"[1, 2]"])
def test_unreadable_predictions_and_metrics_read_as_missing(run: Run, metrics: bytes) -> None:
    """Injected: a torn zip, and a metrics.json that is cut off, not text, or not an object."""
    run.predictions_path("val").write_bytes(b"PK\x03\x04 torn zip")
    run.file("metrics.json").write_bytes(metrics)
    assert run.predictions("val") is None
    assert run.metrics() is None


# ---------------------------------------------------------------------- names and paths
@pytest.mark.parametrize(
    "bad", ["../x", "..", "/etc", "a/b", "", ".hidden", "x/../../y", "a\x00b", "-rf", "x" * 200, "a b"]
)
def test_run_ids_that_could_escape_the_runs_folder_are_refused(store: RunStore, bad: str) -> None:
    with pytest.raises(RunStoreError, match="is not allowed"):
        check_name(bad)
    with pytest.raises(RunStoreError, match="is not allowed"):
        store.get(bad)


@pytest.mark.parametrize("good", ["20261122-061238-tiny", "a", "run_1.b-2"])
def test_ordinary_run_ids_are_accepted(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/abs/path", "..", "a/../b", "<script>alert(1)</script>"]
)
def test_run_names_are_slugified_into_the_runs_folder(store: RunStore, name: str) -> None:
    run = store.create({**CONFIG, "name": name})
    assert run.path.parent == store.root
    assert check_name(run.id) == run.id
    assert "/" not in slugify(name) and ".." not in slugify(name)
    assert store.get(run.id).config()["name"] == name  # the name itself is kept as data, not as a path


def test_threshold_set_names_cannot_escape_the_run(run: Run) -> None:
    with pytest.raises(RunStoreError, match="threshold set name"):
        run.save_threshold_set("../../evil", {"rule": "agreement"})
    assert not (run.path.parent / "evil.json").exists()


def test_listing_skips_folders_that_are_not_runs(store: RunStore, run: Run) -> None:
    """A run being deleted (renamed to .deleting-*) or a folder without config.json is never listed."""
    (store.root / f".deleting-{run.id}-1").mkdir()
    (store.root / f".deleting-{run.id}-1" / "config.json").write_text("{}")
    (store.root / "half-made").mkdir()
    assert [r.id for r in store.list()] == [run.id]


# ---------------------------------------------------------------------- liveness
def test_a_running_status_whose_process_is_gone_reads_as_interrupted(run: Run) -> None:
    pid, start = dead_pid()
    run.update_status(state="running", stage="masks_1", pid=pid, pid_start=start)
    status = run.status()
    assert status["state"] == "interrupted" and status["stage"] == "masks_1"
    assert "masks_1" in status["error"] and "resume" in status["error"]
    assert run.raw_status()["state"] == "running"  # reading never rewrites the file


def test_a_reused_pid_is_not_taken_for_the_job(run: Run) -> None:
    """Injected: the status names a live pid (this test's) with another start time, as after a reboot."""
    run.update_status(state="running", stage="erm", pid=os.getpid(), pid_start="1")
    assert run.status()["state"] == "interrupted"
    run.update_status(pid_start=process_start_time(os.getpid()))
    assert run.status()["state"] == "running"


def test_a_zombie_process_counts_as_dead() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(process.pid)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not process_alive(process.pid, start)
    process.wait()


def test_a_new_run_is_owned_by_its_creator_until_a_job_takes_it(store: RunStore) -> None:
    """No window in which a just-created queued run reads as interrupted."""
    run = store.create(CONFIG)
    assert run.status()["state"] == "queued"
    assert run.raw_status()["pid"] == os.getpid()


def test_a_cancel_requested_run_whose_process_died_reads_as_cancelled(run: Run) -> None:
    pid, start = dead_pid()
    run.update_status(state="queued", pid=pid, pid_start=start, cancel_requested=True)
    assert run.status()["state"] == "cancelled"


# ---------------------------------------------------------------------- concurrency
WRITER = """
import sys
from pathlib import Path
from masktune_core.runs import Run
run, tag = Run(Path(sys.argv[1])), sys.argv[2]
for i in range(60):
    run.update_status(**{f"{tag}_{i}": i})
"""


def test_status_updates_from_two_processes_lose_nothing(run: Run) -> None:
    """Injected: two processes each merging 60 fields into status.json at the same time (a job and
    a dashboard). Kept: all 120 fields, and a status.json that parses."""
    writers = [spawn(WRITER, str(run.path), tag) for tag in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    status = json.loads(run.file("status.json").read_text())
    assert {f"{tag}_{i}" for tag in "ab" for i in range(60)} <= status.keys()


CREATOR = """
import sys
from masktune_core.runs import RunStore
store = RunStore(sys.argv[1])
for _ in range(15):
    store.create({"dataset": "biased-digits", "name": "same name"})
"""


def test_two_processes_creating_runs_in_one_folder_get_distinct_runs(store: RunStore) -> None:
    """Injected: two server processes creating 15 runs each, same name, same second. Kept: 30 runs."""
    store.root.mkdir(parents=True)
    creators = [spawn(CREATOR, str(store.root)) for _ in range(2)]
    assert [c.wait(timeout=120) for c in creators] == [0, 0]
    listed = store.list()
    assert len(listed) == 30 == len({r.id for r in listed})
    assert all(r.config()["name"] == "same name" and r.status()["state"] in runs.STATES for r in listed)


def test_a_second_process_cannot_work_on_a_locked_run(run: Run) -> None:
    """Injected: ``resume`` from another process while this one holds the run's lock. Kept: the run
    untouched; the second process says why in one line and exits non-zero."""
    pid, start = dead_pid()
    run.update_status(state="running", stage="erm", pid=pid, pid_start=start)
    before = run.file("status.json").read_text()
    with run.exclusive():
        result = python(
            "import sys; from masktune_core.__main__ import main; sys.exit(main(sys.argv[1:]))",
            "resume", run.id, "--runs-dir", str(run.path.parent),
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: run {run.id} is already being worked on by another process"
    assert run.file("status.json").read_text() == before


HOLDER = """
import sys, time
from pathlib import Path
from masktune_core.runs import Run
with Run(Path(sys.argv[1])).exclusive():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_the_run_lock_is_released_when_its_holder_is_killed(run: Run) -> None:
    """Injected: SIGKILL of the process holding a run's lock. Kept: the run can be locked again."""
    holder = spawn(HOLDER, str(run.path), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunStoreError), run.exclusive():
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run.exclusive():
        pass  # the kernel dropped the dead holder's lock


def test_delete_refuses_an_active_run_and_removes_a_finished_one(store: RunStore, run: Run) -> None:
    run.update_status(state="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    with pytest.raises(RunStoreError, match="cancel it first"):
        store.delete(run.id)
    assert run.path.is_dir()
    run.update_status(state="done")
    store.delete(run.id)
    assert store.list() == [] and list(store.root.iterdir()) == []


# ---------------------------------------------------------------------- every file a run writes is durable
def test_every_file_a_run_writes_is_fsynced_then_renamed_then_its_folder_fsynced(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: a record of every fsync. Kept: checkpoints, masks, predictions and JSON files each reach
    the disk before their rename and their folder after it, so a power cut never leaves a stage
    recorded as done over an empty file."""
    import numpy as np
    import torch

    from masktune_core import masking, models

    synced: list[Path] = []
    real_fsync = runs.fsync

    def record(path: Path) -> None:
        synced.append(Path(path))
        real_fsync(path)

    monkeypatch.setattr(runs, "fsync", record)
    writes = {
        run.checkpoint_path("erm"): lambda: models.save_state(
            torch.nn.Linear(2, 2), run.checkpoint_path("erm")
        ),
        run.masks_path("iter1"): lambda: masking.save_masks(
            run.masks_path("iter1"), torch.ones(2, 4, 4, dtype=torch.bool)
        ),
        run.predictions_path("val"): lambda: run.save_predictions("val", {"label": np.zeros(2)}),
        run.file("metrics.json"): lambda: runs.write_json(run.file("metrics.json"), {"splits": {}}),
    }
    for target, write in writes.items():
        synced.clear()
        write()
        assert len(synced) == 2, target
        temporary, folder = synced
        assert temporary.parent == target.parent and temporary.name.startswith(f".{target.name}.")
        assert folder == target.parent and target.is_file()
    assert not list(run.path.rglob("*.tmp"))


# ---------------------------------------------------------------------- an interrupted system call
def test_an_interrupted_system_call_in_training_reads_as_cancelled_not_a_disk_failure(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: InterruptedError (an OSError subclass) raised by the training loop. Kept: the run reads
    as cancelled, as a stop, and is never reported as a failing disk."""
    from masktune_core import train
    from masktune_core.config import RunConfig
    from masktune_core.pipeline import execute

    def interrupted(*args: object, **kwargs: object) -> None:
        raise InterruptedError(errno.EINTR, "Interrupted system call")

    monkeypatch.setattr(train, "train_epoch", interrupted)
    config = RunConfig.from_dict({"dataset": "biased-digits", "train_copies": 0, "epochs": 1}).resolved()
    status = execute(store.create(config.to_dict()))
    assert status["state"] == "cancelled", status
    assert "disk" not in (status.get("error") or "")
