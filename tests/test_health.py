"""Issue 30: a box that tells the truth about itself. /healthz follows inspection (a source that never opens
turns it, and the containers' health check, unhealthy after health_stall_s), a source missing at start is
said once, the MQTT status of a camera follows its source (seen by a subscriber of its own on a real
mosquitto), and a camera missing for a while leaves a few JSON log lines, not one per retry."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server
from runtime.serve.__main__ import main as serve_main
from tests.brokers import Broker
from tests.controlled import CATEGORY
from tests.serving import http_get, looping_server, parts_folder, serve_settings, wait_for

ROOT = Path(__file__).resolve().parents[1]
MISSING = "v4l2:///dev/lineside-no-such-camera"  # a V4L2 device that is not there


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _healthcheck(port: int) -> subprocess.CompletedProcess:
    env = os.environ | {"LINESIDE_PORT": str(port)}
    cmd = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)


def test_a_source_that_never_opens_turns_healthz_unhealthy_after_the_bound(controlled, detector, tmp_path, caplog):
    settings = serve_settings(controlled, MISSING, tmp_path, health_stall_s=2.0, reconnect_max_s=0.2)
    with caplog.at_level("INFO", "lineside.serve"):
        server = Server(settings, detector=detector).start()
        try:
            started = time.monotonic()
            code, body = http_get(server.web.port, "/healthz")
            assert code == 200 or time.monotonic() - started > 2.0, body  # within the bound: only not ready
            assert http_get(server.web.port, "/readyz")[0] == 503
            wait_for(lambda: http_get(server.web.port, "/healthz")[0] == 503, 15, "/healthz never failed")
            body = http_get(server.web.port, "/healthz")[1].decode()
            done = _healthcheck(server.web.port)
            metrics = http_get(server.web.port, "/metrics")[1].decode()
            attempts = server.metrics.camera("").count("source_reconnects")
        finally:
            server.shutdown()
    assert body.startswith("unhealthy: source 'v4l2:///dev/lineside-no-such-camera' away for"), body
    assert done.returncode == 1 and "503 unhealthy: source" in done.stdout, done.stdout + done.stderr
    since = re.search(r'^lineside_since_last_inspection_seconds\{camera=""\} ([\d.e+]+)$', metrics, re.M)
    assert since and float(since[1]) > 2.0, metrics
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "lineside-no-such" in r.getMessage()]
    assert attempts >= 5 and len(said) == 1, said  # every retry counted, the missing camera said once
    assert "cannot be opened at start" in said[0] and "wait_for_source" in said[0]


def test_without_waiting_a_source_missing_at_start_refuses_serve_in_one_line(controlled, tmp_path, capsys):
    flags = ["--source", MISSING, "--bundle", str(controlled), "--category", CATEGORY, "--port", "0"]
    flags += ["--results", str(tmp_path / "r.jsonl"), "--no-explain", "--no-wait-for-source"]
    assert serve_main(flags) == 2
    refused = [x for x in capsys.readouterr().err.splitlines() if x.startswith("serve refused")]
    assert len(refused) == 1 and "cannot be opened" in refused[0] and "wait_for_source" in refused[0], refused


def test_the_mqtt_status_goes_degraded_when_a_cameras_folder_disappears(controlled, detector, tmp_path):
    import paho.mqtt.client as mqtt

    statuses, lock = [], threading.Lock()
    with Broker(tmp_path) as broker:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="an-independent-subscriber")

        def heard(client, userdata, message):
            with lock:
                statuses.append(json.loads(message.payload))

        sub.on_message = heard
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("plant/line1/+/status", qos=1)
        sub.loop_start()
        folder, server = looping_server(controlled, detector, tmp_path, f"mqtt://127.0.0.1:{broker.port}/plant")
        try:

            def states():
                with lock:
                    return [s["state"] for s in statuses]

            wait_for(lambda: "online" in states(), 20, f"no online status: {statuses}")
            shutil.rmtree(folder)
            wait_for(lambda: "degraded" in states(), 20, f"no degraded status: {statuses}")
        finally:
            server.shutdown()
            time.sleep(0.3)
            sub.loop_stop()
    degraded = next(s for s in statuses if s["state"] == "degraded")
    assert degraded["camera"] == "0" and str(folder) in degraded["problem"], degraded
    assert statuses[-1]["state"] == "offline"


@pytest.mark.parametrize("source", [MISSING, "7"], ids=["v4l2-device", "camera-index"])
def test_a_missing_camera_leaves_a_few_json_log_lines(controlled, tmp_path, source):
    """OpenCV's own [ WARN ] lines came one for one with each retry, outside --log-format json."""
    cmd = [sys.executable, "-m", "runtime.serve", "--source", source, "--bundle", str(controlled)]
    cmd += ["--category", CATEGORY, "--port", "0", "--no-explain", "--results", str(tmp_path / "r.jsonl")]
    cmd += ["--reconnect-max-s", "0.1", "--health-stall-s", "1", "--log-format", "json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCV_", "LINESIDE_"))}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "serving on ...": started
        assert line.startswith("serving on"), line + proc.stderr.read()
        time.sleep(8)  # some 40 retries
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    records = [json.loads(x) for x in err.splitlines() if x.strip()]  # every line JSON: nothing of OpenCV's own
    start = next(n for n, r in enumerate(records) if r["message"].startswith("serving camera"))
    about = [r["message"] for r in records if source in r["message"]]
    assert len(about) <= 3 and len(records) - start <= 3, records  # some 40 retries, counted and not logged
    assert any("cannot be opened at start" in m for m in about), about


def test_a_looping_recording_stays_ready_between_passes_and_says_why_when_it_goes(tmp_path):
    """CI caught the MQTT status above going degraded with "source not connected": between two passes of a
    looping folder capture cleared `connected` before anything set a problem, so readiness flapped every pass
    and a folder that went away could first be reported without its name."""
    from runtime.serve.frames.capture import Capture, LatestFrameSlot
    from runtime.serve.frames.sources import open_source
    from runtime.serve.interfaces.metrics import Metrics

    folder = parts_folder(tmp_path / "frames", 2)
    source, slot, stop = open_source(str(folder)), LatestFrameSlot(), threading.Event()
    capture = Capture(source, slot, stop, Metrics().camera("0"), loop=True, backoff_max=0.2)
    at_reopen, lost, plain_open = [], [], source.open

    def open_and_note():  # runs in the capture thread as each opening begins: what it sees is exact, no polling
        if capture.frames:
            at_reopen.append(capture.connected.is_set())
        plain_open()

    def drain():  # the inspector's part: take every frame; note the problem the moment readiness drops
        while not stop.is_set():
            slot.get(0.01)
            if at_reopen and not capture.connected.is_set() and not lost:
                lost.append(capture.problem)

    source.open = open_and_note
    reader = threading.Thread(target=drain, daemon=True)
    capture.start()
    reader.start()
    try:
        wait_for(lambda: len(at_reopen) >= 3, 20, "the folder was not looped over")
        assert all(at_reopen), at_reopen  # connected through every pass
        shutil.rmtree(folder)
        wait_for(lambda: lost, 20, "losing the folder did not make the camera not connected")
        assert str(folder) in lost[0] and "retrying" in lost[0], lost
    finally:
        stop.set()
        slot.abandon()
        capture.join(5)
        reader.join(5)
