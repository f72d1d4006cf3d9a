"""serve against hostile conditions of its own process: workers that die, a results log that cannot be
written, bad settings and config files, a port in use, shutdown and SIGTERM on a real process.

Each test asserts what the issue asks of serve: no crash, no hang (every wait has a
timeout), no result line lost, and bad settings refused at start with one line.
(Files: test_hostile_files.py; brokers, webhooks and HTTP clients: test_hostile_peers.py.)
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server
from runtime.serve.__main__ import main as serve_main
from runtime.serve.frames.capture import LatestFrameSlot
from runtime.serve.frames.sources import Frame, FrameSource
from tests.controlled import CATEGORY, part
from tests.serving import DEFECT, http_get, parts_folder, serve_settings, strict_lines

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _serve_cmd(controlled, source, results, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "runtime.serve",
        "--bundle",
        str(controlled),
        "--category",
        CATEGORY,
        "--source",
        str(source),
        "--results",
        str(results),
        "--port",
        "0",
        "--no-explain",
        *extra,
    ]


# --- workers that die ------------------------------------------------------------------------------------------


def test_results_log_that_cannot_be_written_stops_serve_non_zero(controlled, tmp_path):
    frames = parts_folder(tmp_path / "frames", 3)
    proc = subprocess.run(
        _serve_cmd(controlled, frames, "/dev/full"), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "serve stopped: results log /dev/full cannot be written: [Errno 28] No space left on device"
    )


def test_healthz_fails_when_the_results_log_breaks(controlled, detector, tmp_path):
    frames = parts_folder(tmp_path / "frames", 3)
    server = Server(
        serve_settings(controlled, frames, tmp_path, results=Path("/dev/full"), loop=True), detector=detector
    ).start()
    try:
        assert server.stop.wait(10), "serve kept running with a results log it cannot write"
        status, body = http_get(server.web.port, "/healthz")
        assert status == 503 and b"No space left on device" in body
    finally:
        server.shutdown()


class Exploding(FrameSource):
    """A source whose read fails in a way nobody planned for."""

    live = True

    def open(self):
        pass

    def read(self):
        raise RuntimeError("driver fault")


def test_healthz_fails_when_a_worker_dies(controlled, detector, tmp_path, monkeypatch):
    server = Server(serve_settings(controlled, "cam", tmp_path), detector=detector, source=Exploding("cam")).start()
    try:
        assert server.stop.wait(10)
        status, body = http_get(server.web.port, "/healthz")
        assert status == 503 and b"capture of 'cam' failed: RuntimeError: driver fault" in body
    finally:
        server.shutdown()
    assert server.failure()
    monkeypatch.setattr(detector, "detect", lambda *a, **k: 1 / 0)
    server = Server(
        serve_settings(controlled, parts_folder(tmp_path / "f", 2), tmp_path, loop=True), detector=detector
    ).start()
    try:
        assert server.stop.wait(10)
        status, body = http_get(server.web.port, "/healthz")
        assert status == 503 and b"inspector stopped: ZeroDivisionError" in body
    finally:
        server.shutdown()


# --- settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, setting",
    [
        (["--sink-queue", "-1"], "sink_queue"),
        (["--explain-queue", "0"], "explain_queue"),
        (["--recent", "0"], "recent"),
        (["--mqtt-queue", "0"], "mqtt_queue"),
        (["--category", ""], "category"),
        (["--category", "   "], "category"),
        (["--reconnect-max-s", "0"], "reconnect_max_s"),
        (["--reconnect-max-s", "-1"], "reconnect_max_s"),
        (["--max-fps", "nan"], "max_fps"),
        (["--save-ng-mb", "inf"], "save_ng_mb"),
        (["--threshold", "nan"], "threshold"),
        (["--max-image-pixels", "0"], "max_image_pixels"),
        (["--http-max-connections", "0"], "http_max_connections"),
        (["--http-read-timeout-s", "0"], "http_read_timeout_s"),
        (["--port", "x"], "port"),
    ],
)
def test_every_bounded_setting_is_checked_at_start_in_one_line(controlled, tmp_path, capsys, argv, setting):
    code = serve_main(
        ["--bundle", str(controlled), "--source", str(tmp_path), "--results", str(tmp_path / "r.jsonl"), *argv]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"serve refused to start: setting {setting}: "), err


@pytest.mark.parametrize(
    "config",
    [
        '{"recent": Infinity}',
        "[1, 2]",
        "5",
        '{"providers": 5}',
        '{"explain_seconds": NaN}',
        '{"sink": ["ftp://x"]}',
        "{not json",
    ],
)
def test_a_bad_config_file_is_refused_in_one_line(controlled, tmp_path, capsys, config):
    path = tmp_path / "serve.json"
    path.write_text(config)
    code = serve_main(["--config", str(path), "--bundle", str(controlled), "--source", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("serve refused to start: "), err


def test_a_port_in_use_is_one_line_and_exit_2(controlled, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = _serve_cmd(controlled, parts_folder(tmp_path / "f", 1), tmp_path / "r.jsonl")
        proc = subprocess.run([*cmd, "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "cannot join thread" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"serve refused to start: cannot serve HTTP on 127.0.0.1:{port}") and "in use" in last


# --- signals and shutdown --------------------------------------------------------------------------------------


def test_a_waiting_put_never_replaces_an_unread_frame_even_after_stop():
    slot, stop = LatestFrameSlot(), threading.Event()
    first, second = (Frame(i, 0.0, None, "s") for i in (1, 2))
    slot.put(first, wait=True, stop=stop)
    stop.set()
    putter = threading.Thread(target=slot.put, args=(second, True, stop))
    putter.start()
    putter.join(0.3)
    assert putter.is_alive(), "the put must wait for the reader, stop or not"
    assert slot.get(1).frame_id == 1
    putter.join(2)
    assert slot.get(1).frame_id == 2 and slot.dropped == 0
    slot.abandon()
    assert slot.put(first, wait=True, stop=stop) is True  # no reader left: counted, never blocks


def test_shutdown_of_a_file_source_inspects_every_captured_frame(controlled, detector, tmp_path):
    frames = parts_folder(tmp_path / "frames", 60)
    for attempt in range(4):
        results = tmp_path / f"r{attempt}.jsonl"
        server = Server(serve_settings(controlled, frames, tmp_path, results=results), detector=detector).start()
        deadline = time.time() + 10
        while server.counters()["inspected"] < 3 + 5 * attempt:
            assert time.time() < deadline
            time.sleep(0.005)
        server.shutdown()  # what SIGTERM does
        counts = server.counters()
        assert counts["captured"] == counts["inspected"] == len(strict_lines(results)) and counts["dropped"] == 0, (
            counts
        )


def test_sigterm_on_a_real_process_loses_no_frame(controlled, tmp_path):
    frames, results = tmp_path / "line.avi", tmp_path / "r.jsonl"
    writer = cv2.VideoWriter(str(frames), cv2.VideoWriter_fourcc(*"MJPG"), 25, (128, 128))
    for i in range(1000):
        writer.write(cv2.resize(part(red_box=DEFECT if i % 7 == 6 else None), (128, 128)))
    writer.release()
    proc = subprocess.Popen(
        _serve_cmd(controlled, frames, results), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout.readline().startswith("serving on")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    finally:
        proc.kill()
    counts = dict(kv.split("=") for kv in out.split())
    assert proc.returncode == 0 and 0 < int(counts["captured"]) < 1000, counts
    assert counts["captured"] == counts["inspected"] and counts["dropped"] == "0", counts
    assert len(strict_lines(results)) == int(counts["captured"])
