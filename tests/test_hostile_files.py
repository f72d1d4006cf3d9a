"""serve against hostile files: a folder of bombs, FIFOs, truncated and mis-named images, files that
are not videos, a truncated video, an NG folder holding the user's own files, a result that is not strict JSON.

Each test asserts what the issue asks of serve: no crash, no hang (every wait has a
timeout), nothing garbage reported as OK, no result line lost, no file of the user's
touched. (Workers, settings and signals: test_hostile_serve.py; peers: test_hostile_peers.py.)
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import cv2
import numpy as np
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server
from runtime.serve.__main__ import main as serve_main
from runtime.serve.results.ngstore import INDEX, NgIndex
from tests.controlled import part
from tests.serving import DEFECT, parts_folder, serve_settings, strict_lines


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _run(server: Server, timeout: float = 30) -> Server:
    """Start, wait for the recording to end (or serve to stop), shut down; never hangs."""
    server.start()
    deadline = time.time() + timeout
    while not server.stop.is_set() and not server.finished():
        assert time.time() < deadline, "serve did not finish in time"
        time.sleep(0.05)
    server.shutdown()
    return server


# --- files -------------------------------------------------------------------------------------------------------


def test_save_ng_never_deletes_or_overwrites_a_file_it_did_not_write(controlled, detector, tmp_path):
    frames, ng = parts_folder(tmp_path / "frames", 6), tmp_path / "ng"
    ng.mkdir()
    backup, notes = ng / "old_backup.tar", ng / "my_notes.txt"
    with open(backup, "wb") as f:
        f.truncate(600_000_000)  # sparse: 600 MB to the cap's arithmetic, nothing on disk
    notes.write_text("shift notes")
    runs = []
    for _ in range(3):
        server = Server(serve_settings(controlled, frames, tmp_path, save_ng=ng, save_ng_mb=0.01), detector=detector)
        clash = ng / f"0002_{server.inspector.run_id}_00000003.jpg"  # the name serve will want for its first NG
        if not clash.exists():
            clash.write_bytes(b"the user's own picture")
        _run(server)
        runs.append(server.inspector.run_id)
        time.sleep(1.01)  # run ids have one-second resolution
    assert backup.stat().st_size == 600_000_000 and notes.read_text() == "shift notes"
    assert all((ng / f"0002_{r}_00000003.jpg").read_bytes() == b"the user's own picture" for r in runs)
    ours = {name for entry in NgIndex(ng).entries for name, _, _ in entry}  # as a restart reloads it
    assert f"0005_{runs[2]}_00000006.jpg" in ours  # the newest NG frame is kept (named after its file)
    assert sum((ng / n).stat().st_size for n in ours) + (ng / INDEX).stat().st_size <= 10_000
    on_disk = {p.name for p in ng.iterdir()} - {INDEX, backup.name, notes.name}
    users = {f"0002_{r}_00000003.jpg" for r in runs}
    assert on_disk - users == ours, "a file serve wrote is not in its index (it could never be rotated)"
    assert not any(runs[0] in n for n in ours), "the cap must hold across restarts"


def test_hostile_folder_every_file_gets_one_line_and_none_is_ok(controlled, detector, tmp_path):
    folder = parts_folder(tmp_path / "frames", 2)
    bad = {
        os.fsdecode(b"bad-\xff\xfe.png"): None,  # not UTF-8: a good image behind a name OpenCV chokes on
        "fifo.png": "not a regular file",
        "bomb.png": "limit",
        "truncated.png": "not a readable image",
        "empty.png": "not a readable image",
        "text.png": "not a readable image",
        "folder.png": "not a regular file",
        "tiny.png": "too small",
    }
    shutil.copy(folder / "0000.png", folder / os.fsdecode(b"bad-\xff\xfe.png"))
    os.mkfifo(folder / "fifo.png")
    cv2.imwrite(str(folder / "bomb.png"), np.zeros((1000, 1000), np.uint8))  # 1 MP over a 0.2 MP limit
    (folder / "truncated.png").write_bytes((folder / "0001.png").read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello, I am not a picture")
    (folder / "folder.png").mkdir()
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    server = _run(Server(serve_settings(controlled, folder, tmp_path, max_image_pixels=200_000), detector=detector))
    lines = strict_lines(tmp_path / "results.jsonl")
    assert len(lines) == 10 and [x["frame_id"] for x in lines] == list(range(1, 11))
    by_file = {x["file"]: x for x in lines}
    assert by_file["bad-\\xff\\xfe.png"]["label"] == "OK"  # read through a byte buffer: no crash, a real verdict
    for name, why in bad.items():
        if why is not None:
            assert by_file[name]["label"] == "ERROR" and why in by_file[name]["error"], by_file[name]
            assert name in by_file[name]["error"]
    counts = server.counters()
    assert counts["captured"] == counts["inspected"] == 10 and counts["dropped"] == 0


NOT_VIDEOS = [b"", b"this is a text file, not a video\n", b"\x00\x00\x00\x18ftypmp42" + bytes(40)]  # 0-byte, text, cut


@pytest.mark.parametrize("content", NOT_VIDEOS)
def test_a_file_that_is_not_a_video_is_refused_at_start(controlled, tmp_path, capsys, content):
    video = tmp_path / "clip.mp4"
    video.write_bytes(content)
    started = time.time()
    code = serve_main(["--bundle", str(controlled), "--source", str(video), "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.time() - started < 10
    assert err == [
        f"serve refused to start: --source '{video}' is not a video OpenCV can read "
        "(empty, truncated or another kind of file)"
    ]


def test_a_truncated_video_ends_with_a_warning_naming_the_frame_count(controlled, detector, tmp_path, caplog):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for i in range(20):
        writer.write(part(red_box=DEFECT if i % 5 == 4 else None))
    writer.release()
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with caplog.at_level(logging.WARNING, "lineside.serve"):
        server = _run(Server(serve_settings(controlled, cut, tmp_path), detector=detector))
    counts = server.counters()
    assert 0 < counts["captured"] < 20 and counts["captured"] == counts["inspected"]
    assert len(strict_lines(tmp_path / "results.jsonl")) == counts["captured"]
    assert f"ended after {counts['captured']} readable frames of the 20 it declares" in caplog.text


def test_a_result_that_is_not_strict_json_becomes_an_error_line(controlled, detector, tmp_path, monkeypatch):
    real = detector.detect

    def nan_settings(*args, **kwargs):
        result = real(*args, **kwargs)
        result.settings = {**result.settings, "threshold": float("nan")}
        return result

    monkeypatch.setattr(detector, "detect", nan_settings)
    server = _run(Server(serve_settings(controlled, parts_folder(tmp_path / "f", 3), tmp_path), detector=detector))
    lines = strict_lines(tmp_path / "results.jsonl")
    assert [x["label"] for x in lines] == ["ERROR"] * 3 and all("strict JSON" in x["error"] for x in lines)
    assert server.counters()["ok"] == 0
