"""Fault injection on inputs: damaged images inside a dataset, broken list files, hostile uploads,
checkpoints that carry code, and user text that could become HTML.

Each test states what it injects and asserts what survived. Loader and upload details have their own
unit tests (test_data_folders.py, test_app_try.py); these follow each fault through to what a user sees.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import re
import signal
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masktune_core import models
from masktune_core.__main__ import main
from masktune_core.config import RunConfig
from masktune_core.data import DataOptions, build_dataset
from masktune_core.errors import CheckpointError, DataError
from masktune_core.pipeline import execute
from masktune_core.runs import Run, RunStore
from studio.inference import MAX_UPLOAD_BYTES, UploadError, decode_upload

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_sigterm_handler() -> Iterator[None]:
    """``resume`` installs a SIGTERM handler; in-process calls must not leave it on pytest."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def noise_png(path: Path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: about 50 KB on disk, 400 megapixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


BAD_FILES = {
    "truncated.jpg": lambda: jpeg_bytes()[:300],
    "zero-bytes.png": lambda: b"",
    "not-an-image.png": lambda: b"<html><script>alert(1)</script></html>",
    "bomb.png": png_bomb,
}


@pytest.fixture(scope="module")
def folder_with_bad_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Two classes of 16 good images each, plus one bad file of every kind among the 'a' class."""
    root = tmp_path_factory.mktemp("bad-images")
    for offset, label in enumerate(("a", "b")):
        for index in range(16):
            noise_png(root / label / f"{index:02d}.png", seed=100 * offset + index)
    bad = []
    for name, make in BAD_FILES.items():
        (root / "a" / name).write_bytes(make())
        bad.append(root / "a" / name)
    return root, bad


# ---------------------------------------------------------------------- damaged images in a dataset
def test_bad_images_are_skipped_counted_and_listed(folder_with_bad_images: tuple[Path, list[Path]]) -> None:
    """Injected: a truncated JPEG, a zero-byte PNG, a text file named .png and a decompression bomb
    among 32 good images. Kept: the 32 good images, and the 4 bad paths listed."""
    root, bad = folder_with_bad_images
    bundle = build_dataset("imagefolder", DataOptions(data_dir=str(root), image_size=16, bad_images="skip"))
    assert sorted(bundle.skipped) == sorted(str(p) for p in bad)
    assert sum(len(split) for split in bundle.splits.values()) == 32


def test_bad_images_can_stop_the_run_naming_the_file(folder_with_bad_images: tuple[Path, list[Path]]) -> None:
    root, bad = folder_with_bad_images
    with pytest.raises(DataError) as caught:
        build_dataset("imagefolder", DataOptions(data_dir=str(root), image_size=16, bad_images="fail"))
    assert caught.value.path in {str(p) for p in bad}
    assert "cannot read image" in str(caught.value)


def test_a_run_over_bad_images_lists_them_in_its_status_and_log(
    folder_with_bad_images: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Kept, through a whole run: state done, and every skipped path in status.json and log.txt."""
    root, bad = folder_with_bad_images
    options = {"dataset": "imagefolder", "data_dir": str(root), "backbone": "small-cnn", "image_size": 16,
               "epochs": 1, "batch_size": 16, "device": "cpu", "name": "bad images"}  # fmt: skip
    run = RunStore(tmp_path).create(RunConfig.from_dict(options).resolved().to_dict())
    status = execute(run)
    assert status["state"] == "done", status.get("error")
    assert sorted(status["skipped_files"]) == sorted(str(p) for p in bad)
    log = run.log_text()
    assert "skipped 4 unreadable image(s)" in log
    assert all(str(p) in log for p in bad)


def waterbirds(root: Path, header: str, rows: list[str]) -> DataOptions:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    for index in range(len(rows)):
        noise_png(root / f"{index}.png", seed=index)
    return DataOptions(data_dir=str(root), image_size=8)


@pytest.mark.parametrize(
    ("header", "splits", "words"),
    [
        ("img_id,img_filename,y,split", [0, 1, 2], ["missing column 'place'"]),
        ("img_id,img_filename,y,split,place", [0, 1, 3], ["column 'split'", "'3'"]),
        ("img_id,img_filename,y,split,place", [0, 0, 2], ["split 1 (val) has no images"]),
    ],
    ids=["missing column", "wrong split code", "empty split"],
)
def test_broken_list_files_name_the_file_and_column(
    tmp_path: Path, header: str, splits: list[int], words: list[str]
) -> None:
    columns = header.split(",")
    values = [
        {"img_id": i, "img_filename": f"{i}.png", "y": 0, "split": s, "place": 1}
        for i, s in enumerate(splits)
    ]
    rows = [",".join(str(row[column]) for column in columns) for row in values]
    with pytest.raises(DataError) as caught:
        build_dataset("waterbirds", waterbirds(tmp_path, header, rows))
    assert caught.value.path == str(tmp_path / "metadata.csv")
    for word in words:
        assert word in str(caught.value)


# ---------------------------------------------------------------------- uploads
@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"<html><script>alert(1)</script></html>", "not an image"),
        (b"%PDF-1.7\n" + b"0" * 2048, "not an image"),
        (b"\0" * (MAX_UPLOAD_BYTES + 1), "the limit is"),
        (png_bomb(), "too many pixels"),
        (jpeg_bytes()[:300], "damaged or truncated"),
    ],
    ids=["html named png", "pdf", "oversized", "decompression bomb", "truncated jpeg"],
)
def test_uploads_are_judged_by_decoding_them(data: bytes, words: str) -> None:
    """Injected: files that are not a usable image, however they are named. Kept: one sentence."""
    with pytest.raises(UploadError) as caught:
        decode_upload(data)
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_a_real_image_upload_is_accepted() -> None:
    image = decode_upload(jpeg_bytes())
    assert image.size == (64, 64)


# ---------------------------------------------------------------------- checkpoints
class Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return builtins.open, (str(self.marker), "w")


def test_a_pickle_bearing_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "erm.pt"
    torch.save({"backbone.weight": Payload(marker)}, path)
    model = models.build_model("small-cnn", 2, 3, 16, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(CheckpointError, match="weights-only"):
        models.load_state(model, path)
    assert not marker.exists()


@pytest.mark.parametrize("checkpoint", ["erm", "erm_last"])
def test_a_run_whose_checkpoint_carries_code_fails_safely(
    finished_store: RunStore, tmp_path: Path, checkpoint: str
) -> None:
    """Injected: the finished run's best ERM checkpoint (read by the masks stage) or its ERM training
    state (read on resume) replaced by a pickle that would create a file. Kept: no code runs; the run
    is marked failed with the reason, and its other files are untouched."""
    run = finished_store.list()[0]
    marker = tmp_path / "code-ran"
    torch.save(
        {"model": Payload(marker), "backbone.weight": Payload(marker)}, run.checkpoint_path(checkpoint)
    )
    metrics = run.file("metrics.json").read_bytes()
    redo = [] if checkpoint == "erm_last" else ["erm"]
    run.update_status(state="interrupted", stages_done=redo)
    status = execute(run)
    assert status["state"] == "failed"
    assert not marker.exists()
    assert str(run.checkpoint_path(checkpoint)) in status["error"]
    assert "\n" not in status["error"]
    assert run.file("metrics.json").read_bytes() == metrics


def test_a_checkpoint_of_another_backbone_is_refused(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    other = models.build_model("resnet18", 2, 3, 32, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(CheckpointError, match="small-cnn") as caught:
        models.load_state(other, run.checkpoint_path("erm"))
    assert str(run.checkpoint_path("erm")) in str(caught.value)


# ---------------------------------------------------------------------- a full disk mid-run
def test_a_disk_that_fills_up_mid_run_fails_in_one_line_and_resumes_after(
    finished_store: RunStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Injected: ENOSPC on every new file under predictions/ while the evaluate stage runs. Kept: the
    earlier stages' outputs; one line saying the disk is full; after space is freed, resume finishes."""
    run = finished_store.list()[0]
    run.update_status(state="interrupted", stages_done=["erm", "masks_1", "finetune_1", "randmask"])
    for path in run.file("predictions").iterdir():
        path.unlink()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, dir: str | None = None, **kwargs: object) -> tuple[int, str]:
        if dir is not None and Path(dir).name == "predictions":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert main(["resume", run.id, "--runs-dir", str(finished_store.root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the disk is full; free some space, then resume the run" in err
    assert run.status()["state"] == "failed" and run.status()["stage"] == "evaluate"
    assert run.checkpoint_path("masktune").is_file()

    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    assert main(["resume", run.id, "--runs-dir", str(finished_store.root)]) == 0
    assert run.status()["state"] == "done"
    assert run.prediction_splits() == sorted([*run.metrics()["splits"], "train"])


# ---------------------------------------------------------------------- user text and HTML
UNSAFE_HTML = re.compile(r"unsafe_allow_html\s*=\s*True|\bst\.html\(|components\.v1|components\.html\(")


def test_no_page_renders_raw_html() -> None:
    """Run names, dataset paths and error messages reach the pages; none of them may become HTML. The
    pages only use Streamlit elements that escape text, so no file may switch that off."""
    sources = [
        REPO / "app.py",
        *sorted((REPO / "pages").glob("*.py")),
        *sorted((REPO / "studio").glob("*.py")),
    ]
    assert len(sources) > 3
    offenders = [
        f"{path.name}: {m.group()}" for path in sources for m in UNSAFE_HTML.finditer(path.read_text())
    ]
    assert offenders == []


def test_html_in_a_run_name_stays_text(tmp_path: Path) -> None:
    name = '<img src=x onerror="alert(1)">'
    run = RunStore(tmp_path).create({"dataset": "imagefolder", "name": name})
    assert re.fullmatch(r"[0-9-]+img-src-x-onerror-alert-1", run.id)
    assert json.loads(run.file("config.json").read_text())["name"] == name
    assert Run(run.path).config()["name"] == name
