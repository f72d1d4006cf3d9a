"""Triggered inspection: real HTTP, a real mosquitto broker, a live source on the real clock.

Asserts what the issue asks: with a trigger, exactly one inspection per trigger (a
live frame captured at or after it), its id and time in the result line, and a
trigger that finds the inspector busy queued up to the bound or refused (429,
TOPIC/refused, counted), never silently lost.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.__main__ import main as serve_main
from runtime.serve.frames.sources import FrameSource
from runtime.serve.frames.triggers import trigger_id
from tests.brokers import PASSWORD, USER, Broker, make_pki, tls_client
from tests.controlled import CATEGORY, part
from tests.serving import result_lines, wait_for


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


class LiveCamera(FrameSource):
    """A live source: a new part every `period` seconds; `opens` False: a camera that never answers."""

    live = True

    def __init__(self, period: float = 0.03, opens: bool = True):
        super().__init__("test-camera")
        self.period, self.opens = period, opens

    def open(self) -> None:
        if not self.opens:
            raise ConnectionError("test camera unplugged")

    def read(self):
        time.sleep(self.period)
        return True, part(), ""


def _settings(controlled, tmp_path, **kw) -> Settings:
    base = dict(
        source="test-camera",
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        trigger="software",
        results=tmp_path / "results.jsonl",
    )
    return Settings.of(**(base | kw))


def _post(port: int, query: str = "", body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{port}/api/trigger{query}"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _count(server: Server, outcome: str) -> int:
    return int(server.metrics.registry.get_sample_value("lineside_triggers_total", {"outcome": outcome}) or 0)


def test_trigger_ids_are_read_from_query_text_or_json_and_bad_ones_refused():
    assert trigger_id(b"") is None and trigger_id(b"", "q-1") == "q-1"
    assert trigger_id(b"  part-7 \n") == "part-7" and trigger_id(b'{"id": 42}') == "42"
    assert trigger_id(b"{}", "from-query") == "from-query"
    for bad, why in [
        (b'{"id": [1]}', "string or an integer"),
        (b'{"id": true}', "string or an integer"),
        (b"a\x00b", "printable"),
        (b"x" * 129, "printable"),
        (b"\xff", "not UTF-8"),
        (b"{nope", "not valid JSON"),
        (b"x" * 5000, "at most 4096"),
    ]:
        with pytest.raises(ValueError, match=why):
            trigger_id(bad)


def test_one_inspection_per_http_trigger_with_its_id_and_time(controlled, detector, tmp_path):
    server = Server(_settings(controlled, tmp_path), detector=detector, source=LiveCamera()).start()
    try:
        wait_for(server.capture.connected.is_set, 10, "camera not connected")
        time.sleep(0.5)
        assert server.capture.frames > 5 and result_lines(server) == []  # free frames are not inspected
        port = server.web.port
        answers = [_post(port, "?id=A"), _post(port, body=b'{"id": "B"}'), _post(port, body=b"C"), _post(port)]
        assert [a[0] for a in answers] == [202] * 4 and answers[3][1]["id"] == "http-4"
        wait_for(lambda: len(result_lines(server)) >= 4, 20, "four triggers, four lines")
        time.sleep(0.5)
        assert _post(port, body=b"bad\x01id")[0] == 400 and _post(port, body=b"x" * 5000)[0] == 413
    finally:
        server.shutdown()
    lines = result_lines(server)
    assert [x["trigger_id"] for x in lines] == ["A", "B", "C", "http-4"]  # exactly one each, in order
    assert all(x["label"] in ("OK", "NG") and x["time"] >= x["trigger_time"] for x in lines)
    sent = {a[1]["id"]: a[1]["time"] for a in answers}
    assert all(x["trigger_time"] == sent[x["trigger_id"]] for x in lines)
    assert len({x["frame_id"] for x in lines}) == 4
    assert (_count(server, "accepted"), _count(server, "inspected"), _count(server, "refused")) == (4, 4, 2)


def test_triggers_while_busy_are_queued_to_the_bound_then_refused_never_lost(
    controlled, detector, tmp_path, monkeypatch
):
    detect = detector.detect
    monkeypatch.setattr(detector, "detect", lambda *a, **k: (time.sleep(0.4), detect(*a, **k))[1])
    server = Server(_settings(controlled, tmp_path, trigger_queue=2), detector=detector, source=LiveCamera()).start()
    try:
        wait_for(server.capture.connected.is_set, 10, "camera not connected")
        answers = [_post(server.web.port, f"?id=t{i}") for i in range(7)]
        accepted = [a[1]["id"] for a in answers if a[0] == 202]
        refused = [a for a in answers if a[0] != 202]
        assert 2 <= len(accepted) <= 3 and all(a[0] == 429 and "trigger_queue" in a[1]["error"] for a in refused)
        wait_for(lambda: len(result_lines(server)) == len(accepted), 20, "every accepted trigger inspected")
    finally:
        server.shutdown()
    assert [x["trigger_id"] for x in result_lines(server)] == accepted
    assert (_count(server, "accepted"), _count(server, "refused")) == (len(accepted), len(refused))
    assert _count(server, "inspected") == len(accepted) and _count(server, "unserved") == 0


def test_one_inspection_per_mqtt_command_and_refusals_are_answered(controlled, detector, tmp_path):
    import paho.mqtt.client as mqtt

    broker = Broker(tmp_path)
    broker.start()
    refusals = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: refusals.append(json.loads(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe("line/trigger/refused", qos=1)
    client.loop_start()
    url = f"mqtt://127.0.0.1:{broker.port}/line/trigger"
    server = Server(_settings(controlled, tmp_path, trigger_mqtt=url), detector=detector, source=LiveCamera()).start()
    try:
        assert server.trigger_topic.subscribed.wait(10), "trigger topic not subscribed"
        for payload in (b"P1", b'{"id": "P2"}', b"", b'{"id": [1]}'):
            client.publish("line/trigger", payload, qos=1).wait_for_publish(5)
        wait_for(lambda: len(result_lines(server)) >= 3 and refusals, 20, "three inspections and one refusal")
        time.sleep(0.3)
    finally:
        server.shutdown()
        client.loop_stop()
        broker.stop()
    assert [x["trigger_id"] for x in result_lines(server)] == ["P1", "P2", "mqtt-3"]
    assert len(refusals) == 1 and "string or an integer" in refusals[0]["error"]
    assert (_count(server, "accepted"), _count(server, "refused"), _count(server, "inspected")) == (3, 1, 3)


def test_a_recording_gives_its_next_frame_per_trigger(controlled, detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), part())
    server = Server(_settings(controlled, tmp_path, source=str(folder)), detector=detector).start()
    try:
        for i in range(3):
            assert _post(server.web.port, f"?id=r{i}")[0] == 202
        wait_for(server.finished, 20, "the recording ends after three triggers")
    finally:
        server.shutdown()
    assert [(x["file"], x["trigger_id"]) for x in result_lines(server)] == [
        ("0.png", "r0"),
        ("1.png", "r1"),
        ("2.png", "r2"),
    ]


def test_a_trigger_without_a_frame_is_counted_unserved_at_stop(controlled, detector, tmp_path, caplog):
    camera = LiveCamera(opens=False)
    server = Server(_settings(controlled, tmp_path, reconnect_max_s=0.2), detector=detector, source=camera).start()
    try:
        assert _post(server.web.port, "?id=lost-1")[0] == 202
        time.sleep(0.5)
    finally:
        server.shutdown()
    assert result_lines(server) == [] and _count(server, "unserved") == 1
    assert "lost-1" in caplog.text


def test_free_run_refuses_triggers_and_bad_trigger_settings_are_refused_at_start(
    controlled, detector, tmp_path, capsys
):
    server = Server(
        _settings(controlled, tmp_path, trigger="free-run", max_fps=5), detector=detector, source=LiveCamera()
    ).start()
    try:
        status, body = _post(server.web.port, "?id=x")
        assert status == 409 and "trigger=software" in body["error"]
    finally:
        server.shutdown()
    base = ["--bundle", str(controlled), "--source", str(tmp_path), "--results", str(tmp_path / "r.jsonl")]
    assert serve_main([*base, "--trigger-mqtt", "mqtt://h/t"]) == 2
    assert "needs trigger=software" in capsys.readouterr().err
    assert serve_main([*base, "--trigger", "software", "--trigger-mqtt", "mqtt://h/a/#"]) == 2
    assert "use mqtt://HOST:PORT/TOPIC" in capsys.readouterr().err


def test_the_trigger_topic_takes_the_sinks_credentials_and_tls(controlled, detector, tmp_path, pki, caplog):
    """mqtts:// with a password file, a CA and a client certificate, the sink on the same broker with the same
    settings (and client id setting): both connect, neither drops the other, and every trigger is inspected."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", pki)
    broker.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    mqtt_settings = dict(
        mqtt_username=USER,
        mqtt_password_file=secret,
        mqtt_ca=pki / "ca.crt",
        mqtt_cert=pki / "client.crt",
        mqtt_key=pki / "client.key",
        mqtt_client_id="press-7",
    )
    results = []
    client = tls_client(pki, "trigger-test-pub")
    client.on_message = lambda c, u, m: m.topic.endswith("/result") and results.append(json.loads(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe("plant/#", qos=1)
    client.loop_start()
    url = f"mqtts://127.0.0.1:{broker.port}/line/trigger"
    settings = _settings(
        controlled, tmp_path, trigger_mqtt=url, sink=(f"mqtts://127.0.0.1:{broker.port}/plant",), **mqtt_settings
    )
    server = Server(settings, detector=detector, source=LiveCamera()).start()
    try:
        assert server.trigger_topic.subscribed.wait(10), "trigger topic not subscribed over TLS"
        assert server.trigger_topic.client_id == "press-7-trigger"
        for payload in (b"T1", b'{"id": "T2", "part_id": "SN-9"}'):
            client.publish("line/trigger", payload, qos=1).wait_for_publish(5)
        wait_for(lambda: len(result_lines(server)) >= 2, 20, "two inspections from the TLS trigger topic")
        wait_for(lambda: sum("trigger_id" in r for r in results) >= 2, 10, "both results on the sink's topic")
        assert server.trigger_topic.client.is_connected()
    finally:
        server.shutdown()
        client.loop_stop()
        broker.kill()
    assert [(x["trigger_id"], x.get("part_id")) for x in result_lines(server)] == [("T1", None), ("T2", "SN-9")]
    assert PASSWORD not in caplog.text


def test_a_trigger_topic_whose_broker_refuses_the_password_says_so(tmp_path, pki, caplog):
    from runtime.serve.frames.triggers import MqttTriggers, TriggerQueue
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.results.mqtt import MqttOptions

    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", pki)
    broker.start()
    options = MqttOptions(
        username=USER, password="wrong", ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key"
    )
    topic = MqttTriggers(f"mqtts://127.0.0.1:{broker.port}/t", TriggerQueue(2, Metrics()), options)
    try:
        with caplog.at_level("WARNING", "lineside.serve"):
            topic.start()
            wait_for(lambda: "refused the connection" in caplog.text, 10, "refusal not logged")
    finally:
        topic.close()
        broker.kill()
    assert "wrong" not in caplog.text and not topic.subscribed.is_set()


@pytest.mark.parametrize(
    "url, options, message",
    [
        ("mqtt://h/t", {"ca": "ca.crt"}, "need TLS: write trigger_mqtt as mqtts://"),
        ("mqtts://h/t", {"ca": "/no/such/ca.crt"}, "setting mqtt_ca: /no/such/ca.crt is not a file"),
        ("mqtts://h/t", {"key": "k.pem"}, "setting mqtt_key: needs mqtt_cert"),
        ("mqtt://u:hunter2@h:99999/t", {}, "the port must be a number in 1..65535"),
        ("mqtt://u:hunter2@h/a//b", {}, "no wildcards, empty levels"),
        ("mqtt://u:hunter2@h/a/+", {}, "no wildcards, empty levels"),
        ("mqtt://h/$SYS/broker/uptime", {}, "$ topics"),
        ("http://h/a", {}, "use mqtt://HOST:PORT/TOPIC"),
    ],
)
def test_bad_trigger_topics_and_tls_settings_are_refused_naming_them(url, options, message):
    from pathlib import Path

    from runtime.serve.frames.triggers import MqttTriggers, TriggerQueue
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.results.mqtt import MqttOptions

    given = MqttOptions(**{k: Path(v) for k, v in options.items()})
    with pytest.raises(ValueError) as e:
        MqttTriggers(url, TriggerQueue(2, Metrics()), given)
    assert message in str(e.value) and "hunter2" not in str(e.value)


def test_the_trigger_topic_and_the_sink_take_mqtts_own_port_when_the_url_names_none():
    from runtime.serve.frames.triggers import parse_mqtt_url
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.results.mqtt import MqttOptions, from_spec

    urls = ("mqtt://h/t", "mqtts://h/t", "mqtt://h:1884/t")
    assert [parse_mqtt_url(url).port for url in urls] == [1883, 8883, 1884]
    assert [from_spec(url, Metrics(), 4, MqttOptions()).port for url in urls] == [1883, 8883, 1884]
    for refuse in (parse_mqtt_url, lambda url: from_spec(url, Metrics(), 4, MqttOptions())):
        with pytest.raises(ValueError, match="0 names no broker"):  # not the default port, quietly
            refuse("mqtts://h:0/t")


def test_with_a_token_set_a_trigger_needs_it(controlled, detector, tmp_path):
    server = Server(_settings(controlled, tmp_path, api_token="plc-s3cret"), detector=detector, source=LiveCamera())
    server.start()
    try:
        wait_for(server.capture.connected.is_set, 10, "camera not connected")
        port = server.web.port
        refused = [
            _post(port, "?id=none"),
            _post(port, "?id=wrong", headers={"Authorization": "Bearer plc-s3cre"}),
            _post(port, "?id=basic", headers={"Authorization": "Basic plc-s3cret"}),
            _post(port, "?id=other", headers={"X-Lineside-Token": "plc-s3cret-and-more"}),
        ]
        assert all(status == 401 and "X-Lineside-Token" in body["error"] for status, body in refused), refused
        assert _post(port, "?id=A", headers={"Authorization": "Bearer plc-s3cret"})[0] == 202
        assert _post(port, "?id=B", headers={"X-Lineside-Token": "plc-s3cret"})[0] == 202
        wait_for(lambda: len(result_lines(server)) >= 2, 20, "the two authorised triggers inspected")
    finally:
        server.shutdown()
    assert [x["trigger_id"] for x in result_lines(server)] == ["A", "B"]
    assert _count(server, "accepted") == 2


def test_serve_beyond_loopback_without_a_token_refuses_in_one_line(controlled, detector, tmp_path, capsys):
    """Issue 30: on 0.0.0.0 an empty api_token would leave feedback, teaching and triggers open to the
    network; serve refuses (exit 2) in one line saying how to set one, before it loads the bundle."""
    flags = ["--source", str(tmp_path), "--bundle", str(tmp_path / "no-bundle"), "--category", CATEGORY]
    assert serve_main([*flags, "--host", "0.0.0.0", "--port", "0"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "0.0.0.0" in said[0] and "LINESIDE_API_TOKEN" in said[0], said
    # with a token it serves there, and a trigger without the token is refused
    server = Server(
        _settings(controlled, tmp_path, host="0.0.0.0", api_token="plc-s3cret"), detector=detector, source=LiveCamera()
    )
    server.start()
    try:
        assert _post(server.web.port, "?id=open")[0] == 401
        assert _post(server.web.port, "?id=A", headers={"Authorization": "Bearer plc-s3cret"})[0] == 202
    finally:
        server.shutdown()


def test_loopback_addresses_are_told_apart_from_reachable_ones():
    from runtime.serve.interfaces.web import loopback

    assert all(loopback(h) for h in ("127.0.0.1", "127.3.0.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(loopback(h) for h in ("0.0.0.0", "::", "192.168.0.10", "box.local", ""))
