"""GigE Vision through Aravis, against Aravis's own simulated camera (arv-fake-gv-camera-0.8) on loopback:
settings applied to the camera, free-running inspection, one inspection per software trigger fired on the
camera, the hardware trigger configured, a missing camera waited for, refused settings refused at start, and a
camera whose frames all arrive incomplete (the simulator losing packets) counted as dropping them and not ready."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.__main__ import main as serve_main
from runtime.serve.frames.aravis import PIXEL_FORMATS, to_bgr
from tests.brokers import Broker
from tests.controlled import CATEGORY
from tests.serving import result_lines, wait_for

SYSTEM_GI = Path("/usr/lib/python3/dist-packages")  # Debian's python3-gi: GObject introspection is not a wheel
SERIAL = "LINESIDE1"
CAMERA = f"gige://Aravis-Fake-{SERIAL}"


def _aravis():
    """Aravis's bindings, from the system packages as the README says (a venv with --system-site-packages)."""
    try:
        import gi  # noqa: F401
    except ImportError:
        if (SYSTEM_GI / "gi").is_dir():
            sys.path.append(str(SYSTEM_GI))
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as e:
        pytest.fail(f"Aravis bindings missing ({e}): .ci/run installs gir1.2-aravis-0.8 python3-gi aravis-tools")
    return Aravis


def start_fake_camera(*args: str) -> subprocess.Popen:
    """Aravis's simulated GigE Vision camera on 127.0.0.1 (its own options `args`), once discovery finds it."""
    exe = shutil.which("arv-fake-gv-camera-0.8")
    if exe is None:
        pytest.fail("arv-fake-gv-camera-0.8 is not installed: .ci/run installs Debian's aravis-tools")
    aravis = _aravis()
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([exe, "-i", "127.0.0.1", "-s", SERIAL, *args], **quiet)
    deadline = time.time() + 15
    while True:
        aravis.update_device_list()
        if f"Aravis-Fake-{SERIAL}" in [aravis.get_device_id(i) for i in range(aravis.get_n_devices())]:
            return proc
        if time.time() > deadline or proc.poll() is not None:
            proc.terminate()
            pytest.fail("the fake camera was not discovered")
        time.sleep(0.2)


def stop_fake_camera(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def fake_camera():
    """The simulated camera, found by discovery before the test uses it.

    A new one for each test: the simulator resumes a frame cut short by the previous test's stop,
    so that the next session's first frame would arrive incomplete (an ERROR line, as it should be).
    """
    proc = start_fake_camera()
    try:
        yield CAMERA
    finally:
        stop_fake_camera(proc)


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _settings(controlled, tmp_path, **kw) -> Settings:
    base = dict(
        source=CAMERA,
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        results=tmp_path / "results.jsonl",
        reconnect_max_s=0.5,
    )
    return Settings.of(**(base | kw))


def _feature(server: Server, name: str) -> str:
    return server.source.camera.get_device().get_string_feature_value(name)


def test_every_pixel_format_lineside_reads_becomes_bgr():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    assert (to_bgr(rgb.tobytes(), 6, 4, "RGB8")[1, 1] == [0, 0, 200]).all()
    assert (to_bgr(rgb[..., ::-1].tobytes(), 6, 4, "BGR8")[1, 1] == [0, 0, 200]).all()
    mosaic = np.zeros((8, 8), np.uint8)
    mosaic[0::2, 0::2] = 200  # the red sites of an RGGB sensor (GenICam BayerRG8)
    assert (to_bgr(mosaic.tobytes(), 8, 8, "BayerRG8")[4, 4] == [0, 0, 200]).all()
    mono16 = to_bgr(np.full((2, 2), 4000, np.uint16).tobytes(), 2, 2, "Mono16")
    assert mono16.shape == (2, 2, 3) and mono16.dtype == np.uint16 and (mono16 == 4000).all()
    for name in PIXEL_FORMATS:
        assert to_bgr(bytes(64 * 3 * 2), 8, 4, name).shape[:2] == (4, 8)


def test_a_free_running_camera_is_inspected_with_the_settings_applied(fake_camera, controlled, detector, tmp_path):
    settings = _settings(
        controlled, tmp_path, camera_pixel_format="Mono8", camera_exposure_us=5000.0, camera_gain_db=2.0
    )
    server = Server(settings, detector=detector).start()
    try:
        wait_for(lambda: len(result_lines(server)) >= 3, 30, "three lines from the camera")
        camera = server.source.camera
        assert camera.get_exposure_time() == 5000.0 and camera.get_gain() == 2.0
        assert camera.get_pixel_format_as_string() == "Mono8" and _feature(server, "TriggerMode") == "Off"
        assert server.ready()[0]
    finally:
        server.shutdown()
    lines = result_lines(server)
    assert all(x["source"] == CAMERA and x["label"] in ("OK", "NG") for x in lines)


def test_one_inspection_per_trigger_fired_on_the_camera(fake_camera, controlled, detector, tmp_path):
    settings = _settings(
        controlled, tmp_path, trigger="software", camera_trigger="software", camera_pixel_format="BayerRG8"
    )
    server = Server(settings, detector=detector).start()
    try:
        wait_for(server.capture.connected.is_set, 15, "camera connected")
        assert (_feature(server, "TriggerMode"), _feature(server, "TriggerSource")) == ("On", "Software")
        time.sleep(1.0)
        assert server.capture.frames == 0  # a triggered camera sends nothing by itself
        for part in ("warm-up", "p1", "p2", "p3"):
            request = urllib.request.Request(f"http://127.0.0.1:{server.web.port}/api/trigger?id={part}", b"")
            with urllib.request.urlopen(request, timeout=5) as r:
                assert r.status == 202
        wait_for(lambda: len(result_lines(server)) >= 4, 30, "four triggered lines")
        time.sleep(2.5)  # longer than a re-fire: nothing more comes
    finally:
        server.shutdown()
    warm_up, *lines = result_lines(server)
    # Aravis's simulator, left idle before its first trigger, sends that first frame with most packets
    # missing (so it does without lineside too): that line must then be an ERROR naming it, never OK.
    assert warm_up["trigger_id"] == "warm-up" and (warm_up["label"] != "ERROR" or "incomplete" in warm_up["error"])
    assert [x["trigger_id"] for x in lines] == ["p1", "p2", "p3"] and server.capture.frames == 4
    assert all(x["label"] in ("OK", "NG") and x["time"] >= x["trigger_time"] for x in lines)


def test_the_hardware_trigger_is_set_on_the_camera_and_its_frameswait_for(fake_camera, controlled, detector, tmp_path):
    server = Server(_settings(controlled, tmp_path, camera_trigger="Line0"), detector=detector).start()
    try:
        wait_for(server.capture.connected.is_set, 15, "camera connected")
        assert (_feature(server, "TriggerMode"), _feature(server, "TriggerSource")) == ("On", "Line0")
        assert server.source.waits and server.ready()[0]
        time.sleep(1.0)
        assert result_lines(server) == []  # no pulse on Line0: no part, no line
    finally:
        server.shutdown()


def test_a_camera_that_is_not_there_is_waited_for(controlled, detector, tmp_path):
    _aravis()
    server = Server(_settings(controlled, tmp_path, source="gige://Aravis-Fake-NOBODY"), detector=detector).start()
    try:
        time.sleep(1.5)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.web.port}/readyz", timeout=5)
            status, body = 200, b""
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        assert status == 503 and b"Aravis-Fake-NOBODY" in body and server.health()[0]
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--camera-pixel-format", "Mono12p"], "lineside reads Mono8, Mono16"),
        (["--camera-trigger", "Line7"], "refuses the settings"),
        (["--camera-trigger", "software"], "camera_trigger: software needs trigger=software"),
    ],
)
def test_settings_the_camera_refuses_are_refused_at_start(fake_camera, controlled, tmp_path, capsys, argv, message):
    code = serve_main(["--bundle", str(controlled), "--source", CAMERA, "--results", str(tmp_path / "r.jsonl"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_bayer_frames_match_opencvs_own_demosaic():
    """The conversion table is OpenCV's RGGB naming, checked once more on a real-size gradient."""
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    expected = cv2.cvtColor(gradient, cv2.COLOR_BayerRGGB2BGR)
    assert (to_bgr(gradient.tobytes(), 64, 48, "BayerRG8") == expected).all()


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _statuses(client_messages: list, lock) -> list[dict]:
    with lock:
        return [json.loads(payload) for topic, payload in client_messages if topic.endswith("/status")]


def test_a_camera_sending_only_incomplete_frames_drops_them_and_is_not_ready_until_a_complete_one_comes(
    controlled, detector, tmp_path
):
    """-r 300: the simulator loses 30% of its packets, so no 256 KB frame (180 packets) arrives whole (it does not
    resend them). Then the same camera without losses: serve reconnects and is ready again."""
    import threading

    (tmp_path / "broker").mkdir()
    with Broker(tmp_path / "broker") as broker:
        got, lock = [], threading.Lock()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

        def message(client, userdata, m) -> None:
            with lock:
                got.append((m.topic, m.payload.decode()))

        sub.on_message = message
        sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("plant/#", qos=1)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        lossy = start_fake_camera("-r", "300")
        settings = _settings(controlled, tmp_path, sink=[f"mqtt://127.0.0.1:{broker.port}/plant"])
        server = Server(settings, detector=detector)
        server.capture.blind_after_s = 1.0  # the test's patience, not the product's (capture.BLIND_AFTER_S)
        server.start()
        try:
            port = server.web.port
            wait_for(lambda: not server.ready()[0] and "incomplete" in server.ready()[1], 30, "blind, not ready")
            status, body = _http(port, "/readyz")
            assert status == 503 and "only incomplete frames from the camera for" in body, body
            api = json.loads(_http(port, "/api/status")[1])
            assert not api["ready"] and "only incomplete frames" in api["problem"] and api["counters"]["dropped"] > 0
            metrics = _http(port, "/metrics")[1]
            dropped = [x for x in metrics.splitlines() if x.startswith('lineside_frames_dropped_total{camera=""}')]
            assert dropped and float(dropped[0].split()[-1]) > 0, metrics
            wait_for(lambda: 'lineside_ready{camera=""} 0.0' in _http(port, "/metrics")[1], 5, "ready gauge 0")
            wait_for(
                lambda: any(
                    s["state"] == "degraded" and "only incomplete" in s["problem"] for s in _statuses(got, lock)
                ),
                10,
                "the MQTT status says degraded, naming the incomplete frames",
            )
            assert result_lines(server) == []  # nothing to inspect, nothing reported as OK

            stop_fake_camera(lossy)
            lossy = start_fake_camera()  # the same camera, its packets whole again
            wait_for(lambda: server.ready()[0] and len(result_lines(server)) >= 2, 60, "ready again on whole frames")
            assert _http(port, "/readyz")[0] == 200
            wait_for(lambda: _statuses(got, lock)[-1]["state"] == "online", 10, "the MQTT status back online")
        finally:
            server.shutdown()
            stop_fake_camera(lossy)
            sub.loop_stop()
    assert all(x["label"] in ("OK", "NG", "ERROR") for x in result_lines(server))
