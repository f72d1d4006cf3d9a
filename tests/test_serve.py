"""serve end to end: real HTTP, a real mosquitto broker, a real webhook server, real files."""

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.__main__ import main as serve_main
from tests.brokers import Broker, free_port
from tests.browser import HEADLESS, chromium_exe
from tests.controlled import CATEGORY, part

DEFECT = (96, 64, 144, 112)


@pytest.fixture
def frames(tmp_path) -> Path:
    """Six parts, every third defective, plus one corrupt file."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:02d}.png"), part(red_box=DEFECT if i % 3 == 2 else None))
    (folder / "03b.png").write_bytes(b"\x89PNG broken")
    return folder


def _settings(controlled, frames, tmp_path, **kw) -> Settings:
    base = dict(source=str(frames), bundle=controlled, category=CATEGORY, port=0, results=tmp_path / "results.jsonl")
    return Settings.of(**(base | kw))


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _detector(controlled, tmp_path):
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")


def _explanations(path, count: int, seconds: float = 60.0) -> list[dict]:
    """The EXPLANATION lines of the results log, once there are `count` of them (or the time is up)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [x for x in _lines(path) if x["label"] == "EXPLANATION"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_every_frame_gets_one_durable_line_and_http_answers(controlled, frames, tmp_path):
    server = Server(_settings(controlled, frames, tmp_path), detector=_detector(controlled, tmp_path)).start()
    server.wait()
    port = server.web.port
    explained = _explanations(tmp_path / "results.jsonl", 2)  # the two NG frames (rules: no language model)
    try:
        lines = [x for x in _lines(tmp_path / "results.jsonl") if x["label"] != "EXPLANATION"]
        assert len(lines) == 7 and [x["frame_id"] for x in lines] == list(range(1, 8))
        labels = [x["label"] for x in lines]
        assert labels.count("NG") == 2 and labels.count("ERROR") == 1 and labels.count("OK") == 4
        assert "could not be decoded" in next(x for x in lines if x["label"] == "ERROR")["error"]
        assert _get(port, "/healthz")[0] == 200
        status, body = _get(port, "/metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # prometheus_client's handler
            assert r.headers["Content-Type"].startswith("text/plain; version=") and "X-Content-Type" not in r.headers
        assert status == 200 and b'lineside_frames_inspected_total{camera=""} 7.0' in body
        assert b"lineside_stage_seconds_bucket" in body and b'lineside_build_info{bundle_id="' in body
        assert json.loads(_get(port, "/api/result/latest")[1])["frame_id"] == 7
        assert [x["frame_id"] for x in json.loads(_get(port, "/api/results?since=5")[1])] == [6, 7]
        assert _get(port, "/api/results?since=abc")[0] == 400
        assert _get(port, "/nowhere")[0] == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            chunk = r.read(4096)
            assert b"Content-Type: image/jpeg" in chunk and b"\xff\xd8" in chunk
    finally:
        server.shutdown()
    explanations = [x for x in _lines(tmp_path / "results.jsonl") if x["label"] == "EXPLANATION"]
    assert explanations == explained  # one per NG frame, nothing after the drain
    ng = {x["frame_id"]: x for x in lines if x["label"] == "NG"}
    assert sorted(x["frame_id"] for x in explanations) == sorted(ng) and len(ng) == 2
    for x in explanations:  # each names its frame as the NG line does, and says something about the part
        frame = ng[x["frame_id"]]
        assert (x["run"], x["source"], x["file"]) == (frame["run"], frame["source"], frame["file"])
        assert CATEGORY in x["explanation"]["text"] and x["explained_at"] >= frame["time"]


def test_restart_appends_and_ng_images_are_kept_under_a_cap(controlled, frames, tmp_path):
    runs = []
    for cap_mb in (100.0, 100.0, 0.01):
        server = Server(
            _settings(controlled, frames, tmp_path, save_ng=tmp_path / "ng", save_ng_mb=cap_mb, explain=False),
            detector=_detector(controlled, tmp_path),
        ).start()
        server.wait()
        server.shutdown()
        runs.append(server.inspector.run_id)
        time.sleep(1.01)  # run ids have one-second resolution (plus the pid)
    lines = _lines(tmp_path / "results.jsonl")
    assert len(lines) == 21 and [sum(x["run"] == r for x in lines) for r in runs] == [7, 7, 7]
    saved = sorted((tmp_path / "ng").glob("*.jpg"))
    total = sum(p.stat().st_size for p in (tmp_path / "ng").iterdir())
    assert total <= 10_000  # the third run's 10 kB cap rotated the oldest files out
    newest = tmp_path / "ng" / f"05_{runs[2]}_00000007.jpg"  # named after the file it came from (05.png)
    assert newest in saved and json.loads(newest.with_suffix(".json").read_text())["label"] == "NG"
    assert not (tmp_path / "ng" / f"02_{runs[0]}_00000003.jpg").exists()


class Collector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def mosquitto(tmp_path):
    with Broker(tmp_path) as broker:
        yield broker.port


def test_mqtt_and_webhook_sinks_deliver_to_real_peers(controlled, frames, tmp_path, mosquitto):
    import paho.mqtt.client as mqtt

    got, statuses = [], []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: (statuses if m.topic.endswith("/status") else got).append(json.loads(m.payload))
    sub.connect("127.0.0.1", mosquitto)
    sub.subscribe([("line/results/+/+/result", 1), ("line/results/+/+/status", 1)])  # PREFIX/LINE/CAMERA/...
    sub.loop_start()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    Collector.received = []
    time.sleep(0.3)
    settings = _settings(
        controlled,
        frames,
        tmp_path,
        explain=False,
        sink=(f"mqtt://127.0.0.1:{mosquitto}/line/results", f"http://127.0.0.1:{hook.server_port}/hook"),
    )
    server = Server(settings, detector=_detector(controlled, tmp_path)).start()
    deadline = time.time() + 10
    while not server.sinks[0].client.is_connected() and time.time() < deadline:
        time.sleep(0.05)
    server.wait()
    server.shutdown()
    time.sleep(0.5)
    sub.loop_stop()
    hook.shutdown()
    assert sorted(x["frame_id"] for x in got) == list(range(1, 8))
    assert sorted(x["frame_id"] for x in Collector.received) == list(range(1, 8))
    logged = next(x for x in _lines(tmp_path / "results.jsonl") if x["label"] == "OK")
    assert all("settings" not in x for x in got) and all("settings" in x for x in Collector.received)
    assert statuses[0]["state"] == "online" and statuses[0]["settings"] == logged["settings"]  # sent once, not per line
    assert statuses[-1]["state"] == "offline"
    assert (
        server.metrics.registry.get_sample_value("lineside_sink_failures_total", {"sink": settings.serve.sink[0]})
        is None
    )


def test_a_dead_sink_never_blocks_inspection(controlled, frames, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    server = Server(
        _settings(controlled, frames, tmp_path, explain=False, sink=(dead,)), detector=_detector(controlled, tmp_path)
    ).start()
    server.wait()
    server.shutdown()
    assert len(_lines(tmp_path / "results.jsonl")) == 7
    assert server.metrics.registry.get_sample_value("lineside_sink_failures_total", {"sink": dead}) == 7


def test_a_source_that_never_answers_is_retried_and_not_ready(controlled, tmp_path):
    settings = _settings(
        controlled, "x", tmp_path, source=f"http://127.0.0.1:{free_port()}/cam.mjpg", reconnect_max_s=0.2
    )
    server = Server(settings, detector=_detector(controlled, tmp_path)).start()
    try:
        time.sleep(1.5)
        status, body = _get(server.web.port, "/readyz")
        assert status == 503 and b"cannot open source" in body
        assert server.metrics.registry.get_sample_value("lineside_source_reconnects_total", {"camera": ""}) >= 2
        assert _get(server.web.port, "/healthz")[0] == 200
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sink", "ftp://x/y"], "--sink 'ftp://x/y'"),
        (["--sink", "mqtt://host-only"], "mqtt://HOST:PORT/PREFIX"),
        (["--source", "/no/such/video.mp4"], "neither a camera index"),
        (["--port", "70000"], "setting port"),
        (["--teach", "-1"], "setting teach"),
    ],
)
def test_bad_settings_are_refused_at_start_up(controlled, tmp_path, capsys, argv, message):
    code = serve_main(
        ["--bundle", str(controlled), "--source", str(tmp_path), "--results", str(tmp_path / "r.jsonl"), *argv]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_config_file_unknown_key_is_named(controlled, tmp_path, capsys):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"category": "widget", "treshold": 0.4}))
    assert serve_main(["--config", str(config), "--bundle", str(controlled)]) == 2
    assert "unknown settings ['treshold']" in capsys.readouterr().err


def test_status_page_in_real_headless_chromium(controlled, frames, tmp_path):
    browser = chromium_exe()
    server = Server(
        _settings(controlled, frames, tmp_path, loop=True, max_fps=10), detector=_detector(controlled, tmp_path)
    ).start()
    try:
        deadline = time.time() + 20
        while server.state.last_ng is None or "explanation" not in server.state.last_ng:
            assert time.time() < deadline, "no explained NG frame"
            time.sleep(0.1)
        profile = tmp_path / "chrome-profile"
        dom = subprocess.run(
            [
                browser,
                *HEADLESS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                f"http://127.0.0.1:{server.web.port}/",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    finally:
        server.shutdown()
    assert '<small id="ready" class="">ready</small>' in dom  # (the page in depth: tests/test_operator_page.py)
    inspected = int(dom.split('data-field="counts">inspected ')[1].split(" ")[0])
    assert inspected >= 7
    thumbs = dom.split('class="thumb"')[1:]
    assert thumbs and "a photo of a widget with a scratch" in thumbs[0].split("</button>")[0]


def test_reference_only_bundle_serves_after_teaching(frames, tmp_path):
    from export.build import build_bundle
    from export.patch_encoder import PatchSpec

    bundle = build_bundle(tmp_path / "default", "default", patch=PatchSpec(image_size=128, precisions=("fp32",)))
    assert bundle.components.keys() == {"patch_encoder"}
    with pytest.raises(ValueError, match="no language branch: give --references DIR or --teach N"):
        Server(Settings.of(source=str(frames), bundle=tmp_path / "default", port=0, results=tmp_path / "r.jsonl"))
    server = Server(
        Settings.of(
            source=str(frames),
            bundle=tmp_path / "default",
            port=0,
            teach=2,
            explain=False,
            results=tmp_path / "r.jsonl",
        )
    ).start()
    server.wait()
    server.shutdown()
    lines = _lines(tmp_path / "r.jsonl")
    assert [x["label"] for x in lines[:2]] == ["TEACH", "TEACH"] and len(lines) == 7
    inspected = [x for x in lines[2:] if x["label"] != "ERROR"]
    assert inspected and all(x["branches"] == ["reference"] for x in inspected)
    assert all(x["refiner"] in ("contours", "none") for x in inspected)


def test_references_are_read_in_their_own_colour_order(controlled, frames, tmp_path):
    """Reference files and frames are both BGR on disk: every line scores as detect() does with both the right way round."""
    refs = tmp_path / "refs"
    refs.mkdir()
    reference = part()
    reference[..., 0] //= 2  # a tint, so that a channel swap would show
    cv2.imwrite(str(refs / "good.png"), reference)
    detector = _detector(controlled, tmp_path)
    server = Server(_settings(controlled, frames, tmp_path, references=refs, explain=False), detector=detector).start()
    server.wait()
    server.shutdown()
    memory = detector.remember([reference], colour="BGR")
    files = [p for p in sorted(frames.iterdir()) if p.name != "03b.png"]  # 03b is the corrupt one
    expected = [detector.detect(cv2.imread(str(p)), CATEGORY, memory).image_score for p in files]
    scores = [x["image_score"] for x in _lines(tmp_path / "results.jsonl") if x["label"] in ("OK", "NG")]
    assert scores == pytest.approx(expected, abs=1e-6) and max(scores[:2]) > 1e-3  # the tint is seen on good parts
