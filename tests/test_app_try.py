"""Try an image: upload validation (pure functions) and the page (AppTest) on uploads and test samples."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from masktune_core import selective
from masktune_core.runs import RunStore
from studio import inference
from tests.apptest_pages import render_page_script

pytestmark = pytest.mark.usefixtures("fresh_caches")


def try_page(**query: str) -> AppTest:
    return render_page_script("try", **query)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    data = bytearray(png(Image.new("1", (8, 8))))
    # Signature (8 bytes), then the IHDR chunk: length (4), type (4), width and height (4 each), ... CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ---------------------------------------------------------------------------------------- decode_upload
def test_a_text_file_named_png_is_rejected() -> None:
    with pytest.raises(inference.UploadError, match="not an image"):
        inference.decode_upload(b"just some text, saved as photo.png\n")


def test_an_empty_file_is_rejected() -> None:
    with pytest.raises(inference.UploadError, match="empty"):
        inference.decode_upload(b"")


def test_an_oversized_file_is_rejected_before_decoding() -> None:
    data = png(Image.new("RGB", (64, 64)))
    with pytest.raises(inference.UploadError, match="limit is"):
        inference.decode_upload(data, max_bytes=len(data) - 1)
    assert inference.decode_upload(data, max_bytes=len(data)).size == (64, 64)


def test_a_decompression_bomb_is_rejected() -> None:
    bomb = png_declaring(30000, 30000)
    assert len(bomb) < 200  # small on disk, 900 megapixels declared
    with pytest.raises(inference.UploadError, match="too many pixels"):
        inference.decode_upload(bomb)


def test_the_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(inference.UploadError, match=r"too many pixels.*9000 x 5000"):
        inference.decode_upload(png_declaring(9000, 5000))  # below Pillow's own limit, above ours


def test_other_formats_and_truncated_files_are_rejected() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="GIF")
    with pytest.raises(inference.UploadError, match="GIF image; upload a PNG or JPEG"):
        inference.decode_upload(buffer.getvalue())
    data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(inference.UploadError, match="damaged or truncated"):
        inference.decode_upload(data[: len(data) // 2])


def test_a_jpeg_is_decoded() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="JPEG")
    image = inference.decode_upload(buffer.getvalue())
    assert image.format == "JPEG" and image.size == (40, 30)


def test_to_model_input_matches_the_run_format() -> None:
    rgba = Image.new("RGBA", (50, 40), (255, 255, 255, 0))
    rgba.putpixel((0, 0), (10, 200, 30, 255))
    rgb = inference.to_model_input(rgba, channels=3, size=28)
    assert rgb.shape == (3, 28, 28) and rgb.dtype == np.uint8
    assert rgb[:, 14, 14].tolist() == [0, 0, 0]  # transparent pixels are laid over black
    grey = inference.to_model_input(Image.new("RGB", (10, 10), (255, 255, 255)), channels=1, size=16)
    assert grey.shape == (1, 16, 16) and int(grey.min()) == 255


def test_selective_decision_explains_itself() -> None:
    names = ["cat", "dog"]
    default = inference.default_threshold_set(2)
    agree = np.array([0.1, 0.9], dtype=np.float32)
    accepted, reason = inference.selective_decision(default, agree, agree, names)
    assert accepted and "dog is 0.900 ≥ the threshold 0.500" in reason
    accepted, reason = inference.selective_decision(
        default, np.array([0.8, 0.2], dtype=np.float32), agree, names
    )
    assert not accepted and "disagree: ERM predicts cat, MaskTune predicts dog" in reason
    strict = selective.ThresholdSet("strict", "agreement", selective.Thresholds.build(2, 0.5, [None, 0.95]))
    accepted, reason = inference.selective_decision(strict, agree, agree, names)
    assert not accepted and "0.900 < the threshold 0.950" in reason


# ---------------------------------------------------------------------------------------- the page
def test_empty_store_explains_what_to_do(empty_store: RunStore) -> None:
    at = try_page()
    assert not at.exception
    assert any("No run in state done" in i.value for i in at.info)


def test_a_valid_png_gives_predictions_and_a_decision(finished_store: RunStore) -> None:
    at = try_page()
    assert any("Upload an image" in i.value for i in at.info)
    digit = Image.new("L", (60, 60), 0)
    for x in range(20, 40):
        digit.putpixel((x, 30), 255)
    at.file_uploader(key="try_upload").set_value(("digit.png", png(digit), "image/png")).run()
    assert not at.exception and not at.error
    labels = {m.label for m in at.metric}
    assert {"ERM", "MaskTune"} <= labels
    assert len(at.get("image")) == 5  # input, both heatmaps, mask, masked image
    decisions = [m.value for m in [*at.success, *at.error]]
    assert len(decisions) == 1 and r"default\: agreement" in decisions[0]


def test_an_invalid_upload_shows_one_clear_error(finished_store: RunStore) -> None:
    at = try_page()
    at.file_uploader(key="try_upload").set_value(("photo.png", b"not an image at all", "image/png")).run()
    assert [e.value for e in at.error] == [
        "photo.png: The file is not an image Pillow can read; upload a PNG or JPEG."
    ]
    assert not at.metric


def test_a_test_sample_is_judged_under_every_saved_set(finished_store: RunStore) -> None:
    run = finished_store.list()[0]
    for name, t in (("loose", 0.0), ("strict", 1.0)):
        value = selective.ThresholdSet(name, "softmax_masktune", selective.Thresholds.build(2, t))
        run.save_threshold_set(name, json.loads(value.to_json()))
    at = try_page(run=run.id)
    at.session_state["try_source"] = "sample"
    at.run()
    assert not at.exception
    assert any("true label" in c.value for c in at.caption)
    assert any("loose" in s.value for s in at.success)  # every top probability is >= 0
    assert any("strict" in e.value for e in at.error)  # a top probability below 1 is rejected at t = 1
