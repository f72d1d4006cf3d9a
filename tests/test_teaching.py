"""Safe teaching and the operating point in serve: planted bad frames refused, thresholds set and shown."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.detect.detector import Detector
from runtime.detect.lines import FrameRef, teach_line
from runtime.detect.screening import screen
from runtime.serve import Server
from runtime.serve.judging.teaching import Operating
from tests.controlled import CATEGORY, part
from tests.serving import http_get, serve_settings


def textured(seed: int, size: int = 128) -> np.ndarray:
    """A good part with texture: smooth shading plus fine grain (HxWx3 uint8 RGB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 100 + 40 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 6, (size, size))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def near(direction: np.ndarray, scale: float, seed: int) -> np.ndarray:
    v = direction + scale * np.random.default_rng(seed).standard_normal(direction.shape)
    return v / np.linalg.norm(v)


def test_screen_refuses_the_planted_outlier_and_keeps_the_good():
    direction = np.ones(32) / np.sqrt(32)
    globals_ = np.stack([near(direction, 0.05, s) for s in range(7)] + [near(-direction, 0.05, 99)])
    reasons = screen([textured(s) for s in range(8)], globals_.astype(np.float32))
    assert reasons[:7] == [None] * 7
    assert reasons[7].startswith("outlier") and "limit" in reasons[7]


def test_screen_refuses_empty_and_blurred_frames():
    images = [textured(s) for s in range(6)]
    images[2] = np.full_like(images[2], 90)  # a covered lens
    images[4] = cv2.GaussianBlur(images[4], (0, 0), 5)  # out of focus
    direction = np.ones(16) / 4.0
    reasons = screen(images, np.stack([near(direction, 0.01, s) for s in range(6)]).astype(np.float32))
    assert reasons[2].startswith("empty") and reasons[4].startswith("blurred")
    assert [r for i, r in enumerate(reasons) if i not in (2, 4)] == [None] * 4


def test_screen_keeps_frames_that_are_all_alike():
    """Identical flat parts are not outliers, empty or blurred among themselves; two frames cannot outvote."""
    flat = [np.full((64, 64, 3), 128, np.uint8)] * 5
    assert screen(flat, np.tile(np.eye(1, 8, dtype=np.float32), (5, 1))) == [None] * 5
    assert screen([textured(0), textured(1)], np.eye(2, 8, dtype=np.float32)) == [None, None]


def test_a_rejected_teach_line_says_why():
    line = teach_line(FrameRef("r", 3, 1.0, "src"), 2, "blurred (sharpness 1.0, the others' median 40.0)")
    assert line["label"] == "TEACH" and line["references"] == 2 and line["rejected"].startswith("blurred")
    assert "rejected" not in teach_line(FrameRef("r", 1, 1.0, "src"), 1)


def test_operating_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="one way"):
        Operating([part()], Path("good"), from_teach=True, teach=4)
    with pytest.raises(ValueError, match="holds no image"):
        Operating([], Path("good"))
    with pytest.raises(ValueError, match="teach >= 2"):
        Operating(from_teach=True, teach=1)


def _folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(path / f"{i:02d}.png"), frame)
    return path


def _serve(controlled, tmp_path, source: Path, threshold: float = 0.5, **settings) -> tuple[list[dict], dict]:
    detector = Detector.from_bundle(controlled, map_weight=1.0, threshold=threshold, text_cache_dir=tmp_path / "text")
    server = Server(serve_settings(controlled, source, tmp_path, **settings), detector=detector).start()
    server.wait()
    code, body = http_get(server.web.port, "/api/status")
    server.shutdown()
    assert code == 200, body
    return [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()], json.loads(body)


def test_teach_refuses_a_planted_outlier_frame_and_says_which(controlled, tmp_path):
    odd = np.zeros((256, 256, 3), np.uint8)  # another part: black, far from grey in this encoder's global space
    frames = [part(), part(), odd, part(), part(), part(), part(red_box=(96, 64, 144, 112))]
    lines, _ = _serve(controlled, tmp_path, _folder(tmp_path / "frames", frames), teach=5)
    teach = [x for x in lines if x["label"] == "TEACH"]
    assert [x["frame_id"] for x in teach] == [1, 2, 3, 4, 5]
    assert [x["references"] for x in teach] == [1, 2, 2, 3, 4]
    assert teach[2]["rejected"].startswith("outlier") and all("rejected" not in x for x in teach[:2] + teach[3:])
    verdicts = [x for x in lines if x["label"] in ("OK", "NG")]
    assert [x["frame_id"] for x in verdicts] == [6, 7] and verdicts[1]["label"] == "NG"
    assert "reference" in verdicts[0]["branches"]
    assert verdicts[1]["explanation"]["basis"] == "references"  # measured against the taught frames' pixels


def test_calibrate_dir_sets_the_threshold_the_results_and_status_show(controlled, tmp_path):
    good = _folder(tmp_path / "good", [part()] * 3)
    frames = _folder(tmp_path / "frames", [part(), part(red_box=(96, 64, 144, 112))])
    lines, status = _serve(controlled, tmp_path, frames, calibrate=good, false_alarm_target=0.05)
    point = status["operating_point"]
    assert point["source"].startswith(f"calibrate {good}") and point["images"] == 3
    assert point["target_false_alarm"] == 0.05 and not point["reachable"]  # 3 images cannot show 5%
    assert all(x["settings"]["threshold"] == point["threshold"] for x in lines)
    assert [x["label"] for x in lines] == ["OK", "NG"]


def test_threshold_from_the_taught_frames(controlled, tmp_path):
    frames = _folder(tmp_path / "frames", [part()] * 4 + [part(red_box=(96, 64, 144, 112))])
    lines, status = _serve(controlled, tmp_path, frames, teach=4, calibrate_teach=True)
    point = status["operating_point"]
    assert point["source"] == "4 taught frames, each against the others" and point["images"] == 4
    assert lines[-1]["label"] == "NG" and lines[-1]["settings"]["threshold"] == point["threshold"]


def test_status_shows_a_threshold_given_as_a_setting(controlled, tmp_path):
    frames = _folder(tmp_path / "frames", [part()])
    _, status = _serve(controlled, tmp_path, frames, threshold=0.6)
    assert status["operating_point"]["threshold"] == 0.6 and status["operating_point"]["source"] == "threshold setting"
    assert status["operating_point"]["expected_false_alarm"] is None


def test_detect_calibrates_from_a_folder_and_says_how(controlled, tmp_path, capsys):
    from runtime.detect.__main__ import main

    good = _folder(tmp_path / "good", [part()] * 4)
    frames = _folder(tmp_path / "frames", [part(), part(red_box=(96, 64, 144, 112))])
    argv = [str(frames), "--bundle", str(controlled), "--category", CATEGORY, "--out", str(tmp_path / "out")]
    argv += ["--calibrate", str(good), "--false-alarm-target", "0.2", "--text-cache-dir", str(tmp_path / "text")]
    assert main(argv) == 0
    printed = capsys.readouterr().err
    assert "operating point: threshold" in printed and f"calibrate {good}" in printed and "target 20.00%" in printed
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [x["label"] for x in lines] == ["OK", "NG"] and lines[0]["settings"]["threshold"] > 0.0
