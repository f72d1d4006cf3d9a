"""serve against hostile inputs and peers: real files, FIFOs, a real mosquitto broker that goes
away, real HTTP servers that redirect, half-sent HTTP requests, SIGTERM on a real process.

Each test asserts what the issue asks of serve: no crash, no hang (every wait has a
timeout), nothing garbage reported as OK, no result line lost, no file of the user's
touched, and bad settings refused at start with one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.__main__ import main as serve_main
from runtime.serve.capture import LatestFrameSlot
from runtime.serve.metrics import Metrics
from runtime.serve.mqtt import MqttOptions, MqttSink
from runtime.serve.ngstore import INDEX, NgIndex
from runtime.serve.sinks import WebhookSink
from runtime.serve.sources import Frame, FrameSource
from tests.controlled import CATEGORY, part

ROOT = Path(__file__).resolve().parents[1]
DEFECT = (96, 64, 144, 112)


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _parts(folder: Path, n: int, every_ng: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:04d}.png"), part(red_box=DEFECT if i % every_ng == every_ng - 1 else None))
    return folder


def _settings(controlled, source, tmp_path, **kw) -> Settings:
    base = dict(
        source=str(source),
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        results=tmp_path / "results.jsonl",
    )
    return Settings.of(**(base | kw))


def _strict(text: str) -> dict:
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token} in {text[:80]}")

    return json.loads(text, parse_constant=refuse)


def _lines(path) -> list[dict]:
    return [_strict(x) for x in Path(path).read_text().splitlines()]


def _run(server: Server, timeout: float = 30) -> Server:
    """Start, wait for the recording to end (or serve to stop), shut down; never hangs."""
    server.start()
    deadline = time.time() + timeout
    while not server.stop.is_set() and not server.finished():
        assert time.time() < deadline, "serve did not finish in time"
        time.sleep(0.05)
    server.shutdown()
    return server


def _get(port, path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# --- files -------------------------------------------------------------------------------------------------------


def test_save_ng_never_deletes_or_overwrites_a_file_it_did_not_write(controlled, detector, tmp_path):
    frames, ng = _parts(tmp_path / "frames", 6), tmp_path / "ng"
    ng.mkdir()
    backup, notes = ng / "old_backup.tar", ng / "my_notes.txt"
    with open(backup, "wb") as f:
        f.truncate(600_000_000)  # sparse: 600 MB to the cap's arithmetic, nothing on disk
    notes.write_text("shift notes")
    runs = []
    for _ in range(3):
        server = Server(_settings(controlled, frames, tmp_path, save_ng=ng, save_ng_mb=0.01), detector=detector)
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
    folder = _parts(tmp_path / "frames", 2)
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
    server = _run(Server(_settings(controlled, folder, tmp_path, max_image_pixels=200_000), detector=detector))
    lines = _lines(tmp_path / "results.jsonl")
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
        server = _run(Server(_settings(controlled, cut, tmp_path), detector=detector))
    counts = server.counters()
    assert 0 < counts["captured"] < 20 and counts["captured"] == counts["inspected"]
    assert len(_lines(tmp_path / "results.jsonl")) == counts["captured"]
    assert f"ended after {counts['captured']} readable frames of the 20 it declares" in caplog.text


def test_a_result_that_is_not_strict_json_becomes_an_error_line(controlled, detector, tmp_path, monkeypatch):
    real = detector.detect

    def nan_settings(*args, **kwargs):
        result = real(*args, **kwargs)
        result.settings = {**result.settings, "threshold": float("nan")}
        return result

    monkeypatch.setattr(detector, "detect", nan_settings)
    server = _run(Server(_settings(controlled, _parts(tmp_path / "f", 3), tmp_path), detector=detector))
    lines = _lines(tmp_path / "results.jsonl")
    assert [x["label"] for x in lines] == ["ERROR"] * 3 and all("strict JSON" in x["error"] for x in lines)
    assert server.counters()["ok"] == 0


# --- workers that die ------------------------------------------------------------------------------------------


def test_results_log_that_cannot_be_written_stops_serve_non_zero(controlled, tmp_path):
    frames = _parts(tmp_path / "frames", 3)
    proc = subprocess.run(
        _serve_cmd(controlled, frames, "/dev/full"), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "serve stopped: results log /dev/full cannot be written: [Errno 28] No space left on device"
    )


def test_healthz_fails_when_the_results_log_breaks(controlled, detector, tmp_path):
    frames = _parts(tmp_path / "frames", 3)
    server = Server(
        _settings(controlled, frames, tmp_path, results=Path("/dev/full"), loop=True), detector=detector
    ).start()
    try:
        assert server.stop.wait(10), "serve kept running with a results log it cannot write"
        status, body = _get(server.web.port, "/healthz")
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
    server = Server(_settings(controlled, "cam", tmp_path), detector=detector, source=Exploding("cam")).start()
    try:
        assert server.stop.wait(10)
        status, body = _get(server.web.port, "/healthz")
        assert status == 503 and b"capture of 'cam' failed: RuntimeError: driver fault" in body
    finally:
        server.shutdown()
    assert server.failure()
    monkeypatch.setattr(detector, "detect", lambda *a, **k: 1 / 0)
    server = Server(_settings(controlled, _parts(tmp_path / "f", 2), tmp_path, loop=True), detector=detector).start()
    try:
        assert server.stop.wait(10)
        status, body = _get(server.web.port, "/healthz")
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
        cmd = _serve_cmd(controlled, _parts(tmp_path / "f", 1), tmp_path / "r.jsonl")
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
    frames = _parts(tmp_path / "frames", 60)
    for attempt in range(4):
        results = tmp_path / f"r{attempt}.jsonl"
        server = Server(_settings(controlled, frames, tmp_path, results=results), detector=detector).start()
        deadline = time.time() + 10
        while server.counters()["inspected"] < 3 + 5 * attempt:
            assert time.time() < deadline
            time.sleep(0.005)
        server.shutdown()  # what SIGTERM does
        counts = server.counters()
        assert counts["captured"] == counts["inspected"] == len(_lines(results)) and counts["dropped"] == 0, counts


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
    assert len(_lines(results)) == int(counts["captured"])


# --- sinks -----------------------------------------------------------------------------------------------------


class Broker:
    """A real mosquitto on a fixed port that can be stopped and started again (sessions persisted)."""

    def __init__(self, folder: Path):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.fail("mosquitto is not installed: .ci/run installs Debian's package (apt-get install mosquitto)")
        self.exe, self.port, self.proc = exe, _free_port(), None
        stay = "user root\n" if os.geteuid() == 0 else ""  # else, as root, it drops to a user who cannot save here
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\n{stay}"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    if b.proc.poll() is None:
        b.stop()


def _subscriber(port: int, got: list):
    """A QoS 1 subscriber with a persistent session: the broker keeps its messages across a restart."""
    import paho.mqtt.client as mqtt

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hostile-test-sub", clean_session=False)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.reconnect_delay_set(min_delay=1, max_delay=1)
    sub.connect("127.0.0.1", port)
    sub.subscribe("line/results/line1/0/result", qos=1)  # PREFIX/LINE/CAMERA/result
    sub.loop_start()
    time.sleep(0.3)
    return sub


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_mqtt_records_published_while_the_broker_is_away_arrive_after_it_returns(broker):
    got: list = []
    sub = _subscriber(broker.port, got)
    metrics = Metrics()
    sink = MqttSink("127.0.0.1", broker.port, "line/results", metrics, 64, MqttOptions(queue_max=100, drain_s=15))
    sink.start()
    _wait(sink.client.is_connected, 10, "sink never connected")
    for i in range(1, 11):
        sink.offer({"frame_id": i})
    _wait(lambda: len(got) >= 10, 10, "first records not delivered")
    broker.stop()
    _wait(lambda: not sink.client.is_connected(), 10, "sink did not notice the broker leaving")
    for i in range(11, 31):
        sink.offer({"frame_id": i})
    time.sleep(0.5)
    broker.start()  # same port, same persisted sessions
    for i in range(31, 41):
        sink.offer({"frame_id": i})
    sink.close()
    _wait(lambda: len({x["frame_id"] for x in got}) >= 40, 15, "records lost across the broker restart")
    sub.loop_stop()
    assert {x["frame_id"] for x in got} == set(range(1, 41))
    value = metrics.registry.get_sample_value
    assert value("lineside_sink_failures_total", {"sink": sink.label}) is None
    assert value("lineside_sink_drops_total", {"sink": sink.label}) is None


def test_mqtt_queue_is_bounded_and_overflow_counted(tmp_path):
    metrics = Metrics()
    sink = MqttSink("127.0.0.1", _free_port(), "line/results", metrics, 64, MqttOptions(queue_max=5, drain_s=0.5))
    sink.start()
    for i in range(20):
        sink.offer({"frame_id": i})
    started = time.time()
    sink.close()
    assert time.time() - started < 5
    value = metrics.registry.get_sample_value
    assert value("lineside_sink_drops_total", {"sink": sink.label}) == 15
    assert value("lineside_sink_failures_total", {"sink": sink.label}) == 5  # never acknowledged: counted


class Redirecting(BaseHTTPRequestHandler):
    """/hook collects POSTs; /moved301, /moved302 redirect there; /loop redirects to itself."""

    posts: list = []
    gets: list = []

    def do_POST(self):
        if self.path.startswith("/moved"):
            return self._redirect(int(self.path[6:9]), "/hook")
        if self.path == "/loop":
            return self._redirect(307, "/loop")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Redirecting.posts.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        Redirecting.gets.append(self.path)
        self.send_response(200)
        self.end_headers()

    def _redirect(self, code: int, where: str):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(code)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Redirecting.posts, Redirecting.gets = [], []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("code", [301, 302])
def test_webhook_redirects_fail_unless_followed_with_the_same_post(webhook, code):
    metrics = Metrics()
    refused = WebhookSink(f"{webhook}/moved{code}", metrics, 16)
    followed = WebhookSink(f"{webhook}/moved{code}", metrics, 16, follow_redirects=True)
    looping = WebhookSink(f"{webhook}/loop", metrics, 16, follow_redirects=True)
    for sink in (refused, followed, looping):
        sink.start()
        for i in range(3):
            sink.offer({"frame_id": i, "sink": sink is followed})
        sink.close()
    value = metrics.registry.get_sample_value
    assert value("lineside_sink_failures_total", {"sink": refused.label}) == 3
    assert value("lineside_sink_failures_total", {"sink": looping.label}) == 3
    assert [x["frame_id"] for x in Redirecting.posts] == [0, 1, 2] and all(x["sink"] for x in Redirecting.posts)
    assert Redirecting.gets == []  # never turned into a GET without the body


# --- HTTP ------------------------------------------------------------------------------------------------------


def _answer(sock: socket.socket) -> bytes:
    """What serve sent before closing: a 503, nothing (b""), or b"reset" when the close came as a reset."""
    try:
        return sock.recv(200)
    except ConnectionResetError:
        return b"reset"


def test_half_sent_requests_cannot_exhaust_http_or_touch_inspection(controlled, detector, tmp_path, caplog):
    frames = _parts(tmp_path / "frames", 6)
    settings = _settings(
        controlled, frames, tmp_path, loop=True, max_fps=20, http_max_connections=20, http_read_timeout_s=1.0
    )
    server = Server(settings, detector=detector).start()
    sockets = []
    try:
        _wait(lambda: server.counters()["inspected"] >= 3, 10, "no frame inspected")
        with caplog.at_level(logging.WARNING, "lineside.serve"):
            for _ in range(60):
                s = socket.create_connection(("127.0.0.1", server.web.port), timeout=5)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
                sockets.append(s)
            before, guard = server.counters()["inspected"], server.web.guard
            _wait(lambda: guard.open + guard.refused == 60, 5, "connections not accepted")
            assert guard.open == 20 and guard.refused == 40
            time.sleep(1.5)  # past the read timeout: the half-sent ones are closed by serve
            answers = [_answer(s) for s in sockets]
        assert guard.open == 0
        assert sum(a.startswith(b"HTTP/1.1 503") or a == b"reset" for a in answers) == 40  # refused at once
        assert sum(a == b"" for a in answers) == 20  # admitted, then closed by the read timeout
        assert _get(server.web.port, "/healthz")[0] == 200
        assert server.counters()["inspected"] > before + 10  # inspection went on meanwhile
        assert caplog.text.count("refusing new ones") == 1  # 40 refusals, one log line
        assert server.metrics.registry.get_sample_value("lineside_http_refused_total") == 40
        assert _get(server.web.port, "/api/results?since=" + "9" * 5000)[0] == 400
        assert _get(server.web.port, "/api/results?since=%C2%B2")[0] == 400
    finally:
        for s in sockets:
            s.close()
        server.shutdown()
    assert all(x["label"] != "ERROR" for x in _lines(tmp_path / "results.jsonl"))
