"""Hostile frames and files: nothing garbage passes as OK, nothing crashes, every input gets a line.

The detector side of the fail-safe contract (serve's and the bundle's are in
test_hostile_files.py, test_hostile_serve.py, test_hostile_peers.py and
test_hostile_bundle.py): a graph that produces NaN,
frames of absurd size, range or depth, files that are bombs, FIFOs or carry
names that are not UTF-8.
"""

import dataclasses
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from runtime.bundle.loader import file_sha256
from runtime.bundle.manifest import Manifest
from runtime.detect.__main__ import main as detect_main
from runtime.detect.detector import Detector, verdict
from runtime.detect.frames import ImageError, read_frame, to_rgb_uint8
from runtime.detect.result import Result
from tests.controlled import CATEGORY, part


def _poison(bundle: Path, component: str) -> None:
    """Turn every float weight of `component`'s fp32 graph into NaN and re-sign the manifest,
    as a broken export or a bad quantisation would leave it."""
    manifest = Manifest.read(bundle)
    entry = manifest.components[component].files["fp32"]
    path = bundle / entry.path
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32 and values.size > 1:
            init.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), init.name))
    onnx.save(model, str(path))
    fixed = dataclasses.replace(entry, sha256=file_sha256(path), bytes=path.stat().st_size)
    comp = dataclasses.replace(manifest.components[component], files={"fp32": fixed})
    dataclasses.replace(manifest, components={**manifest.components, component: comp}).write(bundle)


@pytest.mark.parametrize("component", ["clip_image", "clip_text"])
def test_nan_weights_give_error_never_ok(controlled, tmp_path, component):
    bundle = Path(shutil.copytree(controlled, tmp_path / "nan"))
    _poison(bundle, component)
    detector = Detector.from_bundle(bundle, text_cache_dir=tmp_path / "text", use_sam=False)
    for frame in (part(), part(red_box=(96, 64, 144, 112))):
        result = detector.detect(frame, CATEGORY)
        assert result.label == "ERROR" and "non-finite" in result.error
        json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: no NaN token


def test_a_result_with_a_nan_score_is_an_error_whoever_builds_it():
    assert verdict(float("nan"), 0.5) == "ERROR" and verdict(float("inf"), 0.5) == "ERROR"
    result = Result("OK", float("nan"), None)
    assert result.label == "ERROR" and "not a number" in result.error
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["image_score"] is None


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((1, 1, 3), np.uint8), "too small"),
        (np.zeros((480, 1, 3), np.uint8), "too small"),
        (np.full((64, 64, 3), 1.5, np.float32), "0..1"),
        (np.full((64, 64, 3), -0.1, np.float64), "0..1"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.full((64, 64, 3), 4095, np.uint16), "12 bits"),
        (np.zeros((64, 64, 3), np.int32), "unsupported dtype"),
        (np.zeros((64, 64, 5), np.uint8), "HxWx3"),
    ],
)
def test_garbage_frames_are_refused_with_a_reason(frame, message):
    with pytest.raises(ImageError, match=message):
        to_rgb_uint8(frame)


def test_declared_bit_depth_scales_uint16_frames():
    twelve_bit = np.full((32, 32), 4095, np.uint16)
    assert (to_rgb_uint8(twelve_bit, bits=12) == 255).all()
    with pytest.raises(ImageError, match="declared 12-bit"):
        to_rgb_uint8(np.full((32, 32), 5000, np.uint16), bits=12)
    assert (to_rgb_uint8(np.full((32, 32), 65535, np.uint16)) == 255).all()


def test_detector_streams_garbage_as_error_lines(controlled, tmp_path):
    detector = Detector.from_bundle(controlled, text_cache_dir=tmp_path / "text", use_sam=False, map_weight=1.0)
    frames = [np.zeros((1, 1, 3), np.uint8), np.full((64, 64, 3), 2.0, np.float32), part()]
    results = list(detector.stream(frames, CATEGORY))
    assert [r.label for r in results] == ["ERROR", "ERROR", "OK"]
    assert all(r.bundle_id and r.settings for r in results)
    with pytest.raises(ValueError, match="category"):
        detector.detect(part(), "")


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge image (a decompression bomb's header, rows left out)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_files_that_are_bombs_fifos_or_junk_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(ImageError, match="over the 50 MP limit"):
        read_frame(bomb)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        read_frame(fifo)  # would block for ever if opened
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        read_frame(tmp_path / "junk.png")
    with pytest.raises(FileNotFoundError):
        read_frame(tmp_path / "absent.png")


def test_detect_cli_gives_every_hostile_file_a_strict_json_line(controlled, tmp_path, capsys):
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    ok, png = cv2.imencode(".png", part())
    (folder / "a.png").write_bytes(png.tobytes())
    os.makedirs(folder, exist_ok=True)
    odd = os.fsencode(folder) + b"/b\xff\xfe.png"  # a name that is not UTF-8 (OpenCV 5 segfaults on it)
    with open(odd, "wb") as f:
        f.write(png.tobytes())
    (folder / "c_bomb.png").write_bytes(_png_header_only(20000, 20000))
    os.mkfifo(folder / "d_fifo.png")
    (folder / "e_tiny.png").write_bytes(cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes())
    (folder / "f_last.png").write_bytes(png.tobytes())
    out = tmp_path / "out"
    code = detect_main(
        [
            str(folder),
            "--bundle",
            str(controlled),
            "--category",
            CATEGORY,
            "--out",
            str(out),
            "--text-cache-dir",
            str(tmp_path / "text"),
            "--no-use-sam",
        ]
    )
    assert code == 0
    raw = (out / "results.jsonl").read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    lines = [json.loads(x) for x in raw.splitlines()]
    assert [x["label"] for x in lines] == ["OK", "OK", "ERROR", "ERROR", "ERROR", "OK"]
    errors = [x["error"] for x in lines if x["label"] == "ERROR"]
    assert "limit" in errors[0] and "not a regular file" in errors[1] and "too small" in errors[2]
    assert all(x["bundle_id"] and x["settings"] for x in lines)  # ERROR lines carry the same schema
    assert lines[1]["file"] == "b\\xff\\xfe.png" and lines[1]["source"] == str(folder)
