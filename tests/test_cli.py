"""The command line's contract: run / list / show / resume on a tiny run, and every bad input answered
with one line on stderr naming the field or file, a non-zero exit, no traceback and no run left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from masktune_core.__main__ import main
from masktune_core.runs import RunStore

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--dataset", "biased-digits", "--backbone", "small-cnn", "--epochs", "1", "--batch-size", "64",
    "--train-copies", "0", "--image-size", "16", "--seed", "0", "--device", "cpu",
]  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "masktune_core", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(autouse=True)
def private_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that ignored --runs-dir would land here, never in the project's runs/ folder."""
    monkeypatch.setenv("MASKTUNE_RUNS_DIR", str(tmp_path / "default-runs"))


@pytest.fixture(autouse=True)
def keep_sigterm_handler() -> Iterator[None]:
    """``run`` and ``resume`` install a SIGTERM handler; in-process calls must not leave it on pytest."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------- the contract, end to end
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("cli-runs")
    return root, cli("run", *TINY_FLAGS, "--name", "cli contract", "--runs-dir", str(root))


@pytest.mark.slow  # the module's `finished` fixture trains a run
def test_run_prints_progress_headline_and_the_run_dir_last(
    finished: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = finished
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    run_dir = Path(lines[-1])
    assert run_dir.parent == root and (run_dir / "config.json").is_file()
    assert run_dir.name.endswith("-cli-contract")
    assert any(line.startswith("[erm]") for line in lines)
    assert any(
        line.startswith("test_biased") and "erm acc" in line and "masktune acc" in line for line in lines
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # the module's `finished` fixture trains a run
def test_list_and_show_report_the_finished_run(
    finished: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = finished
    run_id = Path(result.stdout.strip().splitlines()[-1]).name

    listed = cli("list", "--runs-dir", str(root))
    assert listed.returncode == 0
    assert run_id in listed.stdout and "done" in listed.stdout

    rows = json.loads(cli("list", "--json", "--runs-dir", str(root)).stdout)
    assert [(row["id"], row["state"], row["dataset"]) for row in rows] == [(run_id, "done", "biased-digits")]
    assert set(rows[0]["headline"]) == {"erm", "masktune"}

    shown = cli("show", run_id, "--json", "--runs-dir", str(root))
    assert shown.returncode == 0
    report = json.loads(shown.stdout)
    assert {"config", "status", "metrics"} <= report.keys()
    assert report["status"]["state"] == "done"
    assert report["config"]["epochs"] == 1 and report["config"]["image_size"] == 16
    assert set(report["metrics"]["splits"]) == {"val", "test_original", "test_biased"}

    text = cli("show", run_id, "--runs-dir", str(root))
    assert text.returncode == 0 and f"run {run_id}" in text.stdout and "state done" in text.stdout


@pytest.mark.slow  # the module's `finished` fixture trains a run
def test_resume_of_a_done_run_changes_nothing(
    finished: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = finished
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    metrics = (run_dir / "metrics.json").read_bytes()
    resumed = cli("resume", run_dir.name, "--runs-dir", str(root))
    assert resumed.returncode == 0
    assert resumed.stdout.strip().splitlines()[-1] == str(run_dir)
    assert "already done" in resumed.stderr
    assert (run_dir / "metrics.json").read_bytes() == metrics


# ---------------------------------------------------------------------- bad input
def png(path: Path, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (120, 30, 200)).save(path)


def waterbirds(root: Path, header: str, rows: list[str]) -> Path:
    """A Waterbirds folder: metadata.csv with ``header`` and ``rows``, and an image for each row."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    for index in range(len(rows)):
        png(root / f"img{index}.png")
    return root


HEADER = "img_id,img_filename,y,split,place,place_filename"


def rows(splits: list[int]) -> list[str]:
    return [f"{i},img{i}.png,{i % 2},{split},{i % 2},p.png" for i, split in enumerate(splits)]


def waterbirds_flags(tmp: Path, splits: list[int]) -> list[str]:
    return ["--dataset", "waterbirds", "--data-dir", str(waterbirds(tmp / "wb", HEADER, rows(splits)))]


def imagefolder_with_empty_png(root: Path) -> Path:
    for label in ("cats", "dogs"):
        for index in range(6):
            png(root / label / f"{index}.png")
    (root / "cats" / "empty.png").write_bytes(b"")
    return root


# Each case: (name, extra args builder given a tmp folder, words the one stderr line must contain)
BAD_INPUTS: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("unknown dataset", lambda d: ["--dataset", "mnist-typo"], ["dataset", "mnist-typo", "choose one of"]),
    ("unknown backbone", lambda d: ["--backbone", "resnet9000"], ["backbone", "resnet9000"]),
    ("negative epochs", lambda d: ["--epochs", "-1"], ["epochs", "-1"]),
    ("epochs not a number", lambda d: ["--epochs", "two"], ["epochs", "whole number"]),
    ("lr not a number", lambda d: ["--lr", "fast"], ["lr", "must be a number"]),
    ("lr not finite", lambda d: ["--lr", "nan"], ["lr", "finite"]),
    ("batch size 0", lambda d: ["--batch-size", "0"], ["batch_size", "got 0"]),
    ("missing data dir", lambda d: ["--data-dir", str(d / "nowhere")], ["data_dir", "nowhere"]),
    ("bad square colour", lambda d: ["--square-color", "1,2"], ["square_color"]),
    ("bad image policy", lambda d: ["--bad-images", "maybe"], ["bad_images", "maybe"]),
    ("waterbirds without data dir", lambda d: ["--dataset", "waterbirds"], ["data_dir", "metadata.csv"]),
    (
        "metadata.csv without the place column",
        lambda d: ["--dataset", "waterbirds", "--data-dir", str(waterbirds(
            d / "wb", "img_id,img_filename,y,split", [f"{i},img{i}.png,0,0" for i in range(3)]))],
        ["metadata.csv", "missing column 'place'"],
    ),
    (
        "metadata.csv with split code 7",
        lambda d: waterbirds_flags(d, [0, 1, 7]),
        ["metadata.csv", "column 'split'", "'7'"],
    ),
    (
        "metadata.csv with an empty val split",
        lambda d: waterbirds_flags(d, [0, 0, 2, 2]),
        ["metadata.csv", "split 1 (val) has no images"],
    ),
    (
        "zero-byte image with --bad-images fail",
        lambda d: ["--dataset", "imagefolder", "--data-dir", str(imagefolder_with_empty_png(d / "folder")),
                   "--bad-images", "fail", "--backbone", "small-cnn", "--image-size", "16"],
        ["empty.png", "cannot read image"],
    ),
    ("config file missing", lambda d: ["--config", str(d / "none.json")], ["config", "none.json"]),
    (
        "config file not JSON",
        lambda d: ["--config", str(write(d / "c.json", "{epochs: 1"))],
        ["config", "c.json", "not valid JSON"],
    ),
    (
        "config file with an unknown option",
        lambda d: ["--config", str(write(d / "c.json", '{"epochs": 1, "epoch_count": 2}'))],
        ["epoch_count", "unknown option"],
    ),
]  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_clear_line(stderr: str, words: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("case", "make_args", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_one_line_naming_the_field_and_leaves_no_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    make_args: Callable[[Path], list[str]],
    words: list[str],
) -> None:
    runs_dir = tmp_path / "runs"
    extra = make_args(tmp_path)
    tiny = TINY_FLAGS
    if "--dataset" in extra and "digits" not in extra[extra.index("--dataset") + 1]:
        at = TINY_FLAGS.index("--train-copies")  # a digits-only option, refused elsewhere
        tiny = TINY_FLAGS[:at] + TINY_FLAGS[at + 2 :]
    code = main(["run", *tiny, *extra, "--runs-dir", str(runs_dir)])
    captured = capsys.readouterr()
    assert code != 0
    assert_one_clear_line(captured.err, words)
    assert RunStore(runs_dir).list() == []
    assert not runs_dir.exists() or [p for p in runs_dir.iterdir() if not p.name.startswith(".")] == []


def test_an_unknown_flag_gets_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["run", "--epoch", "3"])
    assert caught.value.code == 2
    assert_one_clear_line(capsys.readouterr().err, ["--epoch", "--help"])


@pytest.mark.parametrize("command", ["show", "resume", "cancel"])
@pytest.mark.parametrize("run_id", ["../x", "/etc", "a/b", ".."])
def test_run_ids_that_escape_the_runs_dir_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, run_id: str
) -> None:
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "config.json").write_text("{}")  # bait: a run-like folder beside the runs dir
    assert main([command, run_id, "--runs-dir", str(tmp_path / "runs")]) == 2
    assert_one_clear_line(capsys.readouterr().err, ["is not allowed"])


def test_show_of_a_missing_run_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "20990101-000000-nope", "--runs-dir", str(tmp_path)]) == 2
    assert_one_clear_line(capsys.readouterr().err, ["20990101-000000-nope", str(tmp_path)])


@pytest.mark.parametrize(
    ("err", "words"),
    [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full"), (errno.EACCES, "permission")],
)
def test_unwritable_runs_dir_gets_one_line_and_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], err: int, words: str
) -> None:
    """Injected: every temporary file fails as on a read-only, full or forbidden folder (tests run as
    root, where chmod 555 would not stop a write)."""

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(tempfile, "mkstemp", fail)
    runs_dir = tmp_path / "runs"
    assert main(["run", *TINY_FLAGS, "--runs-dir", str(runs_dir)]) == 2
    assert_one_clear_line(capsys.readouterr().err, [str(runs_dir), words])
    assert list(runs_dir.iterdir()) == []


def test_runs_dir_that_is_a_file_gets_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = write(tmp_path / "runs", "not a folder")
    assert main(["run", *TINY_FLAGS, "--runs-dir", str(runs_dir)]) == 2
    assert_one_clear_line(capsys.readouterr().err, [str(runs_dir)])
    assert main(["list", "--runs-dir", str(runs_dir)]) == 0
    assert "no runs yet" in capsys.readouterr().out


def test_the_real_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    """The same contract through ``python -m masktune_core``, not just ``main()``."""
    for args, words in [
        (["run", "--epochs", "-1", "--runs-dir", str(tmp_path)], ["epochs"]),
        (["show", "../etc", "--runs-dir", str(tmp_path)], ["not allowed"]),
        (["resume", "nope", "--runs-dir", str(tmp_path)], ["no run 'nope'"]),
    ]:
        result = cli(*args)
        assert result.returncode == 2
        assert_one_clear_line(result.stderr, words)
    assert list(tmp_path.iterdir()) == []
