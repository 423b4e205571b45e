"""Fault injection on job processes: SIGKILL inside each stage, dead jobs after a restart, queueing,
cancelling, and several processes or browser tabs acting on one run.

Every run here uses a tiny generated image-folder dataset (64 images, 16 px, small CNN), so a run
costs little more than its process start-up. Each test states what it injects and asserts what survived.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masktune_core import jobs
from masktune_core.config import RunConfig
from masktune_core.errors import RunStoreError
from masktune_core.runs import ACTIVE_STATES, Run, RunStore, file_lock, process_alive, process_start_time

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 300  # generous: the machine may be shared; a passing test never waits this long


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 32 noisy 16 px images, told apart by where a bright square sits."""
    root = tmp_path_factory.mktemp("tiny-images")
    rng = np.random.default_rng(0)
    for label, corner in (("top-left", slice(2, 8)), ("bottom-right", slice(8, 14))):
        (root / label).mkdir()
        for index in range(32):
            pixels = rng.integers(0, 120, size=(16, 16, 3), dtype=np.uint8)
            pixels[corner, corner] = 230
            Image.fromarray(pixels).save(root / label / f"{index:02d}.png")
    return root


def tiny_options(image_dir: Path, **changes: object) -> dict[str, object]:
    # Two ERM epochs of three batches each, so a kill can land mid-ERM after epoch 1's training
    # state was saved, and two steps into each finetune. RandMask is on so its stage is killed too; one
    # round of mask + finetune keeps the stage list short.
    return {
        "dataset": "imagefolder", "data_dir": str(image_dir), "backbone": "small-cnn", "image_size": 16,
        "epochs": 2, "batch_size": 16, "randmask": True, "iterations": 1, "seed": 0, "device": "cpu",
        **changes,
    }  # fmt: skip


def as_flags(options: dict[str, object]) -> list[str]:
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def cli(*args: str, killer_point: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["-c", KILLER, killer_point] if killer_point else ["-m", "masktune_core"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *prefix, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT_S
    )


def only_run(root: Path) -> Run:
    runs = RunStore(root).list()
    assert len(runs) == 1, runs
    return runs[0]


def wait_for(condition: Callable[[], bool], what: str, every: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if every is not None:
            every()
        time.sleep(0.1)


def show_json(run: Run) -> dict:
    """``show --json`` from a fresh process: what a restarted server or another terminal would see."""
    result = cli("show", run.id, "--json", "--runs-dir", str(run.path.parent))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(autouse=True)
def private_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKTUNE_RUNS_DIR", str(tmp_path / "default-runs"))


# ---------------------------------------------------------------------- SIGKILL inside each stage
# argv: POINT CLI-ARGS... Runs the CLI with one hook wrapped, and SIGKILLs the process at POINT.
KILLER = r"""
import os, signal, sys
from masktune_core import masking, pipeline, train
from masktune_core.runs import Run

point, argv = sys.argv[1], sys.argv[2:]
current = {"stage": None}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def tracked(kind, real):
    def stage(*args):
        current["stage"] = kind
        return real(*args)
    return stage

for kind, real in list(pipeline.STAGES.items()):
    pipeline.STAGES[kind] = tracked(kind, real)

real_train_epoch = train.train_epoch
erm_epochs = [0]

def train_epoch(*args, on_step=None, **kwargs):
    if current["stage"] == "erm":
        erm_epochs[0] += 1
    def step(done, total, loss):
        on_step(done, total, loss)
        # ERM: two steps into epoch 2, so epoch 1's training state is on disk. Finetunes: two steps in.
        hit = erm_epochs[0] == 2 if point == "erm" else current["stage"] == point
        if done == 2 and hit:
            die()
    return real_train_epoch(*args, on_step=step, **kwargs)

train.train_epoch = train_epoch

real_iter_masks = masking.iter_masks

def iter_masks(*args, progress, **kwargs):
    def after_batch(done, total):
        progress(done, total)
        if point == "masks":
            die()  # after the first batch of saliency maps
    return real_iter_masks(*args, progress=after_batch, **kwargs)

masking.iter_masks = iter_masks

real_save_predictions = Run.save_predictions

def save_predictions(self, split, arrays):
    real_save_predictions(self, split, arrays)
    if point == "evaluate" and current["stage"] == "evaluate":  # the masks stage saves train's too
        die()  # after the first split's predictions were written

Run.save_predictions = save_predictions

from masktune_core.__main__ import main
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Run:
    """The same config and seed, never interrupted."""
    root = tmp_path_factory.mktemp("reference-runs")
    result = cli("run", *as_flags(tiny_options(image_dir, name="reference")), "--runs-dir", str(root))
    assert result.returncode == 0, result.stderr
    return only_run(root)


def all_predictions(run: Run) -> dict[str, dict[str, np.ndarray]]:
    return {split: run.predictions(split) for split in run.prediction_splits()}


# (hook point, stage named in the status, stages recorded as done when the process died)
KILL_POINTS = [
    ("erm", "erm", []),
    ("masks", "masks_1", ["erm"]),
    ("finetune", "finetune_1", ["erm", "masks_1"]),
    ("randmask", "randmask", ["erm", "masks_1", "finetune_1"]),
    ("evaluate", "evaluate", ["erm", "masks_1", "finetune_1", "randmask"]),
]


@pytest.mark.slow  # trains runs end to end in job processes
@pytest.mark.parametrize(("point", "stage", "done_before"), KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_sigkill_in_stage_then_resume_matches_an_uninterrupted_run(
    reference: Run, image_dir: Path, tmp_path: Path, point: str, stage: str, done_before: list[str]
) -> None:
    root = tmp_path / "runs"
    flags = as_flags(tiny_options(image_dir, name=f"killed in {point}"))
    killed = cli("run", *flags, "--runs-dir", str(root), killer_point=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # Kept: a run that a fresh process reads, reported as interrupted at the stage it reached, with
    # the finished stages recorded and no torn JSON anywhere.
    run = only_run(root)
    report = show_json(run)
    assert report["status"]["state"] == "interrupted"
    assert report["status"]["stage"] == stage
    assert report["status"]["stages_done"] == done_before
    assert stage in report["status"]["error"] and "resume" in report["status"]["error"]
    assert report["config"]["name"] == f"killed in {point}" and report["metrics"] is None
    listed = json.loads(cli("list", "--json", "--runs-dir", str(root)).stdout)
    assert [(row["id"], row["state"], row["stage"]) for row in listed] == [(run.id, "interrupted", stage)]
    for path in run.path.rglob("*.json"):
        json.loads(path.read_text())
    if point == "erm":
        assert run.checkpoint_path("erm_last").is_file(), "epoch 1's training state should be on disk"

    resumed = cli("resume", run.id, "--runs-dir", str(root))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == str(run.path)
    assert run.status()["state"] == "done"
    assert f"resumed after state 'interrupted' at stage '{stage}'" in run.log_text()
    if point == "erm":
        assert "resuming ERM after epoch 1" in run.log_text()  # continued, not restarted
    assert not run.checkpoint_path("erm_last").exists()

    # The resumed run equals the uninterrupted one: same predictions and metrics.
    expected, got = all_predictions(reference), all_predictions(run)
    assert sorted(got) == sorted(expected)
    for split, arrays in expected.items():
        assert sorted(got[split]) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_allclose(got[split][key], value, rtol=0, atol=1e-6, err_msg=f"{split}/{key}")
    expected_metrics, got_metrics = reference.metrics()["splits"], run.metrics()["splits"]
    assert got_metrics.keys() == expected_metrics.keys()
    for split, models in expected_metrics.items():
        assert got_metrics[split].keys() == models.keys()
        for model, values in models.items():
            assert got_metrics[split][model]["accuracy"] == pytest.approx(values["accuracy"], abs=1e-6)


# ---------------------------------------------------------------------- jobs, queue, cancel
def submit(store: RunStore, image_dir: Path, name: str, **changes: object) -> Run:
    options = tiny_options(image_dir, **{"name": name, "epochs": 1, "randmask": False, **changes})
    return jobs.submit(store, RunConfig.from_dict(options))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    store = RunStore(tmp_path / "runs")
    yield store
    # A failed test must not leave its job processes running after the session.
    for run in store.list():
        status = run.raw_status()
        if status.get("pid") != os.getpid() and process_alive(status.get("pid"), status.get("pid_start")):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(status["pid"], signal.SIGKILL)


@contextlib.contextmanager
def all_slots_busy(store: RunStore) -> Iterator[None]:
    """Hold the job slot (MASKTUNE_MAX_JOBS=1) as a running job would, so submitted jobs stay queued."""
    slots = store.root / ".slots"
    slots.mkdir(parents=True, exist_ok=True)
    with file_lock(slots / "slot-0.lock", wait=False):
        yield


class Sampler:
    """Polls the runs' states; remembers the most runs ever seen running at once."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.most_running = 0

    def __call__(self) -> None:
        running = sum(run.raw_status().get("state") == "running" for run in self.runs)
        self.most_running = max(self.most_running, running)

    def wait_until_finished(self) -> None:
        wait_for(lambda: all(r.status()["state"] not in ACTIVE_STATES for r in self.runs), "the jobs", self)


@pytest.mark.slow  # trains runs end to end in job processes
def test_one_slot_runs_jobs_in_turn_and_a_cancel_while_queued_sticks(
    store: RunStore, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: three jobs at once with one slot; the third is cancelled while it waits in the queue.
    Kept: the first two finish, one after the other; the third is cancelled without ever running."""
    monkeypatch.setenv("MASKTUNE_MAX_JOBS", "1")
    with all_slots_busy(store):
        first, second, third = (submit(store, image_dir, name) for name in ("first", "second", "third"))
        # The third job's process is up and waiting for a slot once it has logged its start.
        wait_for(lambda: "job process" in third.log_text(), "the third job to wait")
        jobs.cancel(third)
        wait_for(lambda: third.raw_status()["state"] == "cancelled", "the job to record its cancel")
        assert [r.raw_status()["state"] for r in (first, second)] == ["queued", "queued"]
    sampler = Sampler([first, second, third])
    sampler.wait_until_finished()

    assert [r.status()["state"] for r in (first, second, third)] == ["done", "done", "cancelled"]
    assert sampler.most_running == 1
    assert second.raw_status()["started"] >= first.raw_status()["finished"]
    assert third.raw_status().get("started") is None and third.raw_status()["stages_done"] == []
    for run in (first, second):
        assert show_json(run)["metrics"]["splits"]["test"].keys() == {"erm", "masktune"}
    assert show_json(third)["status"]["state"] == "cancelled"


@pytest.mark.slow  # trains runs end to end in job processes
def test_two_slots_run_two_jobs_at_once(
    store: RunStore, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: two jobs submitted together with MASKTUNE_MAX_JOBS=2. Kept: both run at the same
    time and both finish complete and readable."""
    monkeypatch.setenv("MASKTUNE_MAX_JOBS", "2")
    pair = [submit(store, image_dir, name) for name in ("left", "right")]
    sampler = Sampler(pair)
    sampler.wait_until_finished()
    assert [r.status()["state"] for r in pair] == ["done", "done"]
    assert sampler.most_running == 2
    for run in pair:
        assert run.metrics()["splits"]["test"]["masktune"]["accuracy"] is not None


@pytest.mark.slow  # trains runs end to end in job processes
def test_a_killed_job_reads_interrupted_after_a_restart_and_resumes_once(
    store: RunStore, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: SIGKILL of a job's whole process group mid-ERM (a crash, a reboot); then two browser
    tabs clicking resume at the same moment; then `resume` from a terminal while the job holds the run.
    Kept: a fresh process reads the run as interrupted at ERM; one job process is started, not two;
    the terminal's resume is refused in one line; the run finishes done."""
    monkeypatch.setenv("MASKTUNE_MAX_JOBS", "1")
    run = submit(store, image_dir, "crashes", epochs=2)
    wait_for(lambda: run.raw_status().get("stage") == "erm" and run.raw_status()["state"] == "running", "ERM")
    pid, start = run.raw_status()["pid"], run.raw_status()["pid_start"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid, start), "the job to die")

    report = show_json(run)  # a new process, as after a server restart
    assert report["status"]["state"] == "interrupted" and report["status"]["stage"] == "erm"
    assert RunStore(store.root).get(run.id).status()["state"] == "interrupted"

    with all_slots_busy(store):
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def click_resume() -> None:
            barrier.wait()
            try:
                jobs.start(run, store)
                outcomes.append("started")
            except RunStoreError as err:
                outcomes.append(str(err))

        tabs = [threading.Thread(target=click_resume) for _ in range(2)]
        for tab in tabs:
            tab.start()
        for tab in tabs:
            tab.join()
        assert sorted(outcomes) == sorted(["started", f"run {run.id} is already queued"])

        # The job now holds the run while it waits for the slot; a second process must not touch it.
        wait_for(lambda: run.log_text().count("job process") == 2, "the resumed job to start")
        refused = cli("resume", run.id, "--runs-dir", str(store.root))
        assert refused.returncode == 2
        assert refused.stderr.strip() == f"error: run {run.id} is already being worked on by another process"
    wait_for(lambda: run.status()["state"] not in ACTIVE_STATES, "the resumed job")
    assert run.status()["state"] == "done"
    assert run.log_text().count("resume requested after state 'interrupted' at stage 'erm'") == 1
    assert run.metrics()["splits"]["test"].keys() == {"erm", "masktune"}


def sleeper(new_session: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=new_session
    )


@pytest.mark.parametrize("new_session", [True, False], ids=["job-process-group", "terminal-process"])
def test_cancel_of_a_job_that_dies_before_recording_it_reads_cancelled(
    store: RunStore, new_session: bool
) -> None:
    """Injected: a cancel that reaches a job process before it can handle SIGTERM (still starting up),
    once for a job the dashboard started (own process group) and once for a CLI run in a terminal
    (not a group leader: signalling its group would miss it). Kept: the process is stopped, and the run
    reads as cancelled, not as interrupted."""
    run = store.create({"dataset": "imagefolder", "name": "cancel me"})
    process = sleeper(new_session)
    run.update_status(
        state="running", stage="erm", pid=process.pid, pid_start=process_start_time(process.pid)
    )
    jobs.cancel(run)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert run.status()["state"] == "cancelled"


def test_cancel_of_a_dead_job_records_cancelled_and_start_refuses_an_active_one(store: RunStore) -> None:
    run = store.create({"dataset": "imagefolder", "name": "dead"})
    process = sleeper(True)
    run.update_status(state="running", pid=process.pid, pid_start=process_start_time(process.pid))
    with pytest.raises(RunStoreError, match="already running"):
        jobs.start(run, store)
    process.kill()
    process.wait()
    jobs.cancel(run)
    assert run.raw_status()["state"] == "cancelled"


# ---------------------------------------------------------------------- cancel escalation
def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: a job process that ignores SIGTERM (as one stuck in a system call never reaches the
    point where it checks its stop flag). Kept: cancel kills it after the grace period and the run reads
    as cancelled."""
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        run = store.create(RunConfig().resolved().to_dict())
        run.update_status(state="running", pid=stubborn.pid, pid_start=process_start_time(stubborn.pid))
        monkeypatch.setattr(jobs, "CANCEL_GRACE_S", 0.5, raising=False)
        started = time.monotonic()
        jobs.cancel(run)
        assert stubborn.wait(timeout=30) == -signal.SIGKILL
        assert time.monotonic() - started >= 0.5
        wait_for(lambda: run.status()["state"] == "cancelled", "the run to read cancelled")
    finally:
        stubborn.kill()
        stubborn.wait()


def test_cancel_never_signals_its_own_process_group(tmp_path: Path) -> None:
    """Injected: a cancel, from a process leading its own group (a dashboard started from a shell), of a
    run that process created and still lists as its own. Kept: that process survives and the run reads
    as cancelled."""
    code = (
        "import sys; from masktune_core import jobs; from masktune_core.config import RunConfig; "
        "from masktune_core.runs import RunStore; "
        "run = RunStore(sys.argv[1]).create(RunConfig().resolved().to_dict()); "
        "jobs.cancel(run); print('alive', run.status()['state'])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "runs")],
        env=env, capture_output=True, text=True, timeout=WAIT_S, start_new_session=True,
    )  # fmt: skip
    assert result.stdout.split() == ["alive", "cancelled"], (result.returncode, result.stderr)


# ---------------------------------------------------------------------- a launcher in another folder
@pytest.mark.slow  # trains a run end to end in a job process
def test_a_job_launched_from_another_folder_runs_to_done(tmp_path: Path) -> None:
    """Injected: the launcher the dashboard uses, started from an unrelated working directory with a
    relative runs folder and no PYTHONPATH (as `streamlit run /path/to/app.py` from elsewhere would be).
    Kept: the job process finds the package and the run reaches done."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    options = {"dataset": "biased-digits", "train_copies": 0, "epochs": 1, "image_size": 16, "batch_size": 64}
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "from masktune_core import jobs; from masktune_core.config import RunConfig; "
        "from masktune_core.runs import RunStore; "
        f"print(jobs.submit(RunStore('runs'), RunConfig.from_dict({options!r})).id)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=WAIT_S
    )
    assert result.returncode == 0, result.stderr
    run = RunStore(elsewhere / "runs").get(result.stdout.strip())
    wait_for(lambda: run.status()["state"] not in ACTIVE_STATES, "the job")
    assert run.status()["state"] == "done", (run.status(), run.file("process.txt").read_text())
