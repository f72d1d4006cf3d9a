"""serve against hostile peers: a real mosquitto broker that goes away, real HTTP servers that redirect,
half-sent HTTP requests.

Each test asserts what the issue asks of serve: no crash, no hang (every wait has a
timeout), no result line lost, and inspection untouched by what its peers do.
(Files: test_hostile_files.py; workers, settings and signals: test_hostile_serve.py.)
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server
from runtime.serve.__main__ import main as serve_main
from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.mqtt import MqttOptions, MqttSink, from_spec
from runtime.serve.results.sinks import WebhookSink, parse_sink
from tests.brokers import Broker, free_port
from tests.controlled import CATEGORY
from tests.serving import http_get, parts_folder, serve_settings, strict_lines, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


# --- sinks -----------------------------------------------------------------------------------------------------


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


def test_mqtt_records_published_while_the_broker_is_away_arrive_after_it_returns(broker):
    got: list = []
    sub = _subscriber(broker.port, got)
    metrics = Metrics()
    sink = MqttSink("127.0.0.1", broker.port, "line/results", metrics, 64, MqttOptions(queue_max=100, drain_s=15))
    sink.start()
    wait_for(sink.client.is_connected, 10, "sink never connected")
    for i in range(1, 11):
        sink.offer({"frame_id": i})
    wait_for(lambda: len(got) >= 10, 10, "first records not delivered")
    broker.stop()
    wait_for(lambda: not sink.client.is_connected(), 10, "sink did not notice the broker leaving")
    for i in range(11, 31):
        sink.offer({"frame_id": i})
    time.sleep(0.5)
    broker.start()  # same port, same persisted sessions
    for i in range(31, 41):
        sink.offer({"frame_id": i})
    sink.close()
    wait_for(lambda: len({x["frame_id"] for x in got}) >= 40, 15, "records lost across the broker restart")
    sub.loop_stop()
    assert {x["frame_id"] for x in got} == set(range(1, 41))
    value = metrics.registry.get_sample_value
    assert value("lineside_sink_failures_total", {"sink": sink.label}) is None
    assert value("lineside_sink_drops_total", {"sink": sink.label}) is None


def test_mqtt_queue_is_bounded_and_overflow_counted(tmp_path):
    metrics = Metrics()
    sink = MqttSink("127.0.0.1", free_port(), "line/results", metrics, 64, MqttOptions(queue_max=5, drain_s=0.5))
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
    frames = parts_folder(tmp_path / "frames", 6)
    settings = serve_settings(
        controlled, frames, tmp_path, loop=True, max_fps=20, http_max_connections=20, http_read_timeout_s=1.0
    )
    server = Server(settings, detector=detector).start()
    sockets = []
    try:
        wait_for(lambda: server.counters()["inspected"] >= 3, 10, "no frame inspected")
        with caplog.at_level(logging.WARNING, "lineside.serve"):
            for _ in range(60):
                s = socket.create_connection(("127.0.0.1", server.web.port), timeout=5)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
                sockets.append(s)
            before, guard = server.counters()["inspected"], server.web.guard
            wait_for(lambda: guard.open + guard.refused == 60, 5, "connections not accepted")
            assert guard.open == 20 and guard.refused == 40
            time.sleep(1.5)  # past the read timeout: the half-sent ones are closed by serve
            answers = [_answer(s) for s in sockets]
        assert guard.open == 0
        assert sum(a.startswith(b"HTTP/1.1 503") or a == b"reset" for a in answers) == 40  # refused at once
        assert sum(a == b"" for a in answers) == 20  # admitted, then closed by the read timeout
        assert http_get(server.web.port, "/healthz")[0] == 200
        assert server.counters()["inspected"] > before + 10  # inspection went on meanwhile
        assert caplog.text.count("refusing new ones") == 1  # 40 refusals, one log line
        assert server.metrics.registry.get_sample_value("lineside_http_refused_total") == 40
        assert http_get(server.web.port, "/api/results?since=" + "9" * 5000)[0] == 400
        assert http_get(server.web.port, "/api/results?since=%C2%B2")[0] == 400
    finally:
        for s in sockets:
            s.close()
        server.shutdown()
    assert all(x["label"] != "ERROR" for x in strict_lines(tmp_path / "results.jsonl"))


# --- sink URLs and sinks at shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("http://x:abc/", "the port must be a number in 1..65535"),
        ("https://x:99999/hook", "the port must be a number in 1..65535"),
        ("http://x:0/hook", "the port must be a number in 1..65535 (0 names no peer)"),
        ("http://bad_host-/hook", "is no host name or IP address"),
        ("http://999.1.1.1/hook", "'999.1.1.1' is no host name or IP address"),
        ("http://a..b/hook", "is no host name or IP address"),
        ("http://x/hook#part", "no #fragment"),
        ("http://x/a b", "holds a space or control character"),
        ("http://x/" + "a" * 3000, "longer than 2048 characters"),
        ("mqtt://127.0.0.1:0/x", "the port must be a number in 1..65535"),
        ("mqtt://127.0.0.1:abc/x", "the port must be a number in 1..65535"),
        ("mqtts://u:hunter2@broker:0/x", "the port must be a number in 1..65535"),
        ("opcua-write://plc:65536?verdict=ns=2;i=1", "the port must be a number in 1..65535"),
    ],
)
def test_sink_urls_are_parsed_and_bounded_before_serve_starts(spec, message):
    with pytest.raises(ValueError) as e:
        parse_sink(spec, Metrics(), 8)
    assert message in str(e.value) and "hunter2" not in str(e.value) and len(str(e.value)) < 400


def test_mqtt_port_0_is_refused_not_taken_as_the_default():
    """`port or 1883` read :0 as "no port given": serve dialled 1883 and said nothing."""
    with pytest.raises(ValueError, match=r"the port must be a number in 1\.\.65535 \(0 names no broker\)"):
        from_spec("mqtt://127.0.0.1:0/x", Metrics(), 8, MqttOptions())


@pytest.mark.parametrize("spec", ["http://x:abc/", "mqtt://127.0.0.1:0/x"])
def test_serve_refuses_a_bad_sink_url_at_start_in_one_line(spec, tmp_path, capsys):
    code = serve_main(["--source", str(tmp_path), "--results", str(tmp_path / "r.jsonl"), "--sink", spec])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "the port must be a number in 1..65535" in err, err


def test_a_jsonl_sink_on_a_full_disk_counts_its_failures_and_shuts_down_cleanly(controlled, tmp_path):
    """/dev/full: every write fails with ENOSPC. Each failure is counted in deliver; closing the sink at shutdown
    must not fail again on what a buffer still held (it did, with a raw traceback from the sink's thread)."""
    frames = parts_folder(tmp_path / "frames", 3)
    cmd = [sys.executable, "-m", "runtime.serve", "--bundle", str(controlled), "--category", CATEGORY]
    cmd += ["--source", str(frames), "--results", str(tmp_path / "results.jsonl"), "--port", "0", "--no-explain"]
    proc = subprocess.run([*cmd, "--sink", "jsonl:/dev/full"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr, proc.stderr
    assert "sink jsonl:/dev/full failing: [Errno 28] No space left on device" in proc.stderr
    assert len(strict_lines(tmp_path / "results.jsonl")) == 3  # the durable log has every frame


def test_a_jsonl_sink_cut_short_mid_line_starts_its_next_line_fresh(tmp_path):
    """A write the disk took part of, then refused, leaves half a line; the next record must not be glued onto
    it. A real short write: the file-size limit lets the kernel take 20 bytes and refuse the rest (EFBIG)."""
    target = tmp_path / "copy.out"  # not *.jsonl: its first line is half a line on purpose
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from runtime.serve.interfaces.metrics import Metrics\n"
        "from runtime.serve.results.sinks import JsonlSink\n"
        "sink = JsonlSink(Path(sys.argv[1]), Metrics(), 8)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    sink.deliver({'frame_id': 1, 'pad': 'x' * 40}, None)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "sink.deliver({'frame_id': 2}, None)\n"
        "sink.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "27", proc.stderr  # EFBIG
    assert target.read_text() == '{"frame_id": 1, "pad\n{"frame_id": 2}\n'
