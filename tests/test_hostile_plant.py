"""The plant-facing surface under hostile input: the feedback and trigger endpoints, the MQTT trigger topic,
part ids from file names, PLC output specs and the cameras file. Each case here once broke serve (a 500, a
dead network thread, a stalled capture, a spec taken and ignored) and now gets a clear refusal."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.cameras import read_cameras
from runtime.serve.frames.capture import Capture
from runtime.serve.frames.codes import PartPattern
from runtime.serve.frames.triggers import MqttTriggers, TriggerQueue, trigger_fields
from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.ngstore import ng_stem
from runtime.serve.results.sinks import parse_sink
from runtime.settings import ServeSettings
from tests.brokers import Broker
from tests.controlled import CATEGORY, part
from tests.serving import result_lines, serve_settings, wait_for

TOKEN = "plant-s3cret"
NESTED = b'{"id": ' + b"[" * 3000  # within the 4096-byte bound, deeper than json's parser can recurse


def _call(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _raw(port: int, request: bytes) -> int:
    """The status of a request sent as these very bytes (headers urllib would refuse to send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return int(s.recv(64).split(b" ")[1])


@pytest.fixture
def served(controlled, tmp_path):
    """A triggered recording of three parts (good, defective, defective), references and a token."""
    refs, frames = tmp_path / "refs", tmp_path / "frames"
    refs.mkdir()
    frames.mkdir()
    cv2.imwrite(str(refs / "good.png"), part(384))
    for i, box in enumerate((None, (150, 100, 222, 168), (150, 100, 222, 168))):
        cv2.imwrite(str(frames / f"p{i}.png"), part(384, red_box=box))
    settings = serve_settings(controlled, frames, tmp_path, references=refs, api_token=TOKEN, trigger="software")
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    server = Server(settings, detector=detector).start()
    yield server
    server.shutdown()


def test_nested_json_and_odd_headers_are_refused_not_a_server_error(served):
    port, auth = served.web.port, {"Authorization": f"Bearer {TOKEN}"}
    status, answer = _call(port, "/api/trigger", NESTED, auth)
    assert status == 400 and "nested too deeply" in answer["error"]
    for i in range(3):
        assert _call(port, f"/api/trigger?id=t{i}", b"", auth)[0] == 202
    wait_for(lambda: len(result_lines(served)) == 3, 30, "three triggered parts inspected")
    status, answer = _call(port, "/api/feedback", b'{"run": ' + b"[" * 3000, auth)
    assert status == 400 and "RecursionError" in answer["error"]
    status, answer = _call(port, "/api/feedback", b"\xff\xfe{", auth)
    assert status == 400
    status, answer = _call(port, "/api/feedback", b"{" * 5000, auth)
    assert status == 413
    for who in ("Ana\u202eevil", "Ana\u2028Bo", "\x85", "x" * 65):  # a bidi override, a line separator, C1
        said = {"run": served.inspector.run_id, "frame_id": 2, "decision": "confirmed", "by": who}
        status, answer = _call(port, "/api/feedback", json.dumps(said).encode(), auth)
        assert status == 400 and "by must say who decided" in answer["error"], who
    assert not [x for x in result_lines(served) if x["label"] == "FEEDBACK"]
    body = b'{"run": "r", "frame_id": 1, "decision": "confirmed", "by": "x"}'
    for header in (b"Authorization: Bearer \xff\xfe" + TOKEN.encode(), b"X-Lineside-Token: \xc3\x28"):
        sent = b"POST /api/feedback HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        assert _raw(port, sent + body) == 401, header
        sent = b"POST /api/trigger HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: 0\r\n\r\n"
        assert _raw(port, sent) == 401, header


def test_a_false_alarm_is_taught_once_however_often_it_is_sent(served):
    port, auth = served.web.port, {"Authorization": f"Bearer {TOKEN}"}
    for i in range(3):
        assert _call(port, f"/api/trigger?id=t{i}", b"", auth)[0] == 202
    wait_for(lambda: len(served.state.gallery.frames) == 2, 30, "both NG frames kept")
    held = len(served.inspector.references)
    decision = {"run": served.inspector.run_id, "frame_id": 2, "decision": "false_alarm", "by": "Ana"}
    body = json.dumps(decision | {"add_reference": True}).encode()
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(_call(port, "/api/feedback", body, auth))) for _ in "1234"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(a[0] for a in answers) == [200, 409, 409, 409], answers
    assert "taught already" in next(a[1]["error"] for a in answers if a[0] == 409)
    wait_for(lambda: len(served.inspector.references) == held + 1, 30, "the memory rebuilt with the frame once")
    time.sleep(0.5)
    assert len(served.inspector.references) == held + 1
    taught = [x for x in result_lines(served) if x["label"] == "FEEDBACK" and x.get("reference_added")]
    assert len(taught) == 1


def test_an_mqtt_trigger_nested_too_deeply_is_answered_and_the_topic_lives_on(tmp_path):
    import paho.mqtt.client as mqtt

    broker = Broker(tmp_path)
    broker.start()
    metrics, refusals = Metrics(), []
    queue = TriggerQueue(4, metrics)
    topic = MqttTriggers(f"mqtt://127.0.0.1:{broker.port}/line/trigger", queue)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: refusals.append(json.loads(m.payload))
    try:
        topic.start()
        assert topic.subscribed.wait(10), "trigger topic not subscribed"
        client.connect("127.0.0.1", broker.port)
        client.subscribe("line/trigger/refused", qos=1)
        client.loop_start()
        time.sleep(0.3)
        client.publish("line/trigger", NESTED, qos=1).wait_for_publish(5)
        client.publish("line/trigger", b"after-1", qos=1).wait_for_publish(5)
        wait_for(lambda: queue.waiting() == 1 and refusals, 10, "the next trigger taken and the bad one answered")
    finally:
        client.loop_stop()
        topic.close()
        broker.stop()
    assert "nested too deeply" in refusals[0]["error"]
    assert metrics.registry.get_sample_value("lineside_triggers_total", {"outcome": "refused"}) == 1


def test_trigger_bodies_nested_too_deeply_are_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        trigger_fields(NESTED)


def test_a_part_id_pattern_that_backtracks_without_end_is_cut_short(caplog):
    pattern = PartPattern(r"^(a|aa)+$")  # exponential in re on a long name that almost matches
    name = "a" * 200 + "!.png"
    found = []
    worker = threading.Thread(target=lambda: found.append(pattern.find(name)), daemon=True)
    with caplog.at_level("WARNING", "lineside.serve"):
        started = time.monotonic()
        worker.start()
        worker.join(10)
    assert not worker.is_alive(), "the search still runs: capture would be stalled for good"
    assert found == [None] and time.monotonic() - started < 2
    assert "took over" in caplog.text and "simplify the pattern" in caplog.text
    assert pattern.find("aaaa") == "a"  # a quick search still finds (the group's last repeat)
    assert PartPattern(r"SN-(\d+)").find("lot7_SN-0042.png") == "0042"


def test_part_ids_from_file_names_are_ids_or_nothing(tmp_path):
    from runtime.serve.frames.sources import open_source

    source = open_source(str(tmp_path))  # a real (empty) folder source: capture names it in its log lines
    capture = Capture(source, None, threading.Event(), Metrics(), 0, False, 1.0, "", r"SN-(.*)\.png")
    assert capture.part_of("lot7_SN-0042.png") == "0042"
    assert capture.part_of("SN-a\nb.png") is None  # a newline in a file name never reaches a result line
    assert capture.part_of("SN-" + "x" * 200 + ".png") is None  # longer than any id
    assert capture.part_of("SN-\udcff.png") is None  # a name that is not UTF-8
    with pytest.raises(ValueError, match="setting part_id_pattern: '\\(unclosed' is no regular expression"):
        PartPattern("(unclosed")


def test_part_ids_reach_ng_file_names_without_separators_and_bounded():
    for part_id in ("../../etc/passwd", "a/b\\c", "x" * 10_000, "..", "\x00\n", "COM1:"):
        stem = ng_stem({"run": "20260101T000000Z-1", "frame_id": 7, "part_id": part_id, "camera": "cam-1"})
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".") and len(stem) < 200, stem
        assert all(c.isalnum() or c in "._-" for c in stem), stem


@pytest.mark.parametrize(
    "spec, message",
    [
        ("modbus://h:0", "the port must be a number in 1..65535"),
        ("opcua-server://0.0.0.0:0/x", "the port must be a number in 1..65535"),
        ("modbus://h:502?unit=1_0", "unit='1_0' must be a whole number"),
        ("modbus://h:502?coil=+5", "coil=' 5' must be a whole number"),  # + is a space in a query
        ("modbus://h:502?register=%D9%A1", "must be a whole number"),  # an Arabic-Indic one, which int() takes
        ("modbus://user:pw@h:502", "Modbus TCP has no accounts"),
        ("modbus://h:502#frag", "no #fragment"),
        ("opcua-server://[zz]:4840/x", "--sink 'opcua-server://[zz]:4840/x': 'zz' does not appear to be an IPv4"),
        ("opcua-server://0.0.0.0:4840/x?cameras=a/b,%23", "cameras must be up to 256 different camera ids"),
        ("opcua-server://0.0.0.0:4840/x?cameras=" + "a," * 300, "cameras must be up to 256 different camera ids"),
        ("opcua-server://0.0.0.0:4840/x?cameras=c1,c1", "different camera ids"),
        ("opcua-write://h:4840?verdict=ns=99999999999;i=1", "is not a node id"),
        ("opcua-write://h:4840?verdict=ns=2;i=-5", "is not a node id"),
        ("opcua-write://h:4840?verdict=ns=2;i=99999999999", "is not a node id"),
        ("opcua-write://h:4840?verdict=ns=2;b=!!!", "is not a node id"),
        ("opcua-write://h:4840?verdict=ns=2;s=", "is not a node id"),
    ],
)
def test_plc_specs_that_would_be_taken_and_fail_later_are_refused(spec, message):
    with pytest.raises(ValueError) as e:
        parse_sink(spec, Metrics(), 8, serve=ServeSettings())
    assert message in str(e.value) and "pw" not in str(e.value).replace(spec, "")


def test_a_cameras_file_that_never_ends_is_refused_at_once(controlled, tmp_path):
    base = Settings.of(source="0", bundle=controlled, category=CATEGORY)
    started = time.monotonic()
    with pytest.raises(ValueError, match="over 1024 kB; is it the cameras file"):
        read_cameras(Path("/dev/zero"), base)
    assert time.monotonic() - started < 5
    empty = tmp_path / "cameras.yaml"
    empty.write_text("cameras: []\n")
    with pytest.raises(ValueError, match="give a list of cameras"):
        read_cameras(empty, base)


@pytest.mark.parametrize(
    "text, message",
    [
        ("cameras:\n  - {id: a, source: null}\n", "camera a: source has no value"),
        ("cameras:\n  - {id: a, source: '0', threshold:}\n", "camera a: threshold has no value"),
        ("cameras:\n  - {id: yes, source: '0'}\n", "camera 1's id must be text, got True"),
        ("cameras:\n  - {id: a, source: '0', threshold: 0.4, threshold: 0.9}\n", "threshold given twice"),
        ("cameras:\n  - {id: a, source: '0', sink: [{url: 'mqtt://h/p'}]}\n", "camera a: sink must be a list of text"),
    ],
)
def test_cameras_files_that_yaml_takes_quietly_are_refused(tmp_path, text, message):
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_cameras(path, Settings())


def test_a_cameras_file_may_share_settings_through_a_yaml_merge(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text(
        "defaults: &defaults {source: '0', threshold: 0.4}\n"
        "cameras:\n  - {<<: *defaults, id: a}\n  - {<<: *defaults, id: b, threshold: 0.6}\n"
    )
    with pytest.raises(ValueError, match="only a `cameras:` list at the top"):
        read_cameras(path, Settings())  # an extra top-level key is refused; anchors go inside the list
    path.write_text(
        "cameras:\n  - &first {id: a, source: '0', threshold: 0.4}\n  - {<<: *first, id: b, threshold: 0.6}\n"
    )
    specs = read_cameras(path, Settings())
    assert [(s.id, s.settings.detector.threshold) for s in specs] == [("a", 0.4), ("b", 0.6)]
