"""The MQTT sink as a plant runs it, against a real mosquitto started here: TLS with a CA made by the
test, a password file, client certificates, a retained availability with a last will, the topic tree,
and a broker killed mid-run with no QoS 1 result lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.mqtt import MqttOptions, from_spec
from runtime.serve.results.sinks import parse_sink
from runtime.settings import ServeSettings
from tests.brokers import PASSWORD, USER, Broker, free_port, make_pki, tls_client

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"threshold": 0.5, "precision": "fp32"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, pki):
    b = Broker(tmp_path, pki)
    b.start()
    yield b
    if b.proc.poll() is None:
        b.kill()


def _settings(pki: Path, tmp_path: Path, **kw) -> ServeSettings:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    base = dict(
        mqtt_line="line7",
        mqtt_username=USER,
        mqtt_password_file=secret,
        mqtt_ca=pki / "ca.crt",
        mqtt_cert=pki / "client.crt",
        mqtt_key=pki / "client.key",
        mqtt_queue=100,
        mqtt_client_id="press-7-cam",
    )
    return ServeSettings(**(base | kw))


class Subscriber:
    """A real paho client on TLS with a persistent session: it reconnects by itself and is sent what it missed."""

    def __init__(self, port: int, pki: Path, topic: str = "plant/#"):
        self.got: list[tuple[str, dict | str, int, bool]] = []
        self.lock = threading.Lock()
        self.client = tls_client(pki, "plant-test-sub", clean_session=False)
        self.client.on_message = self._message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        _wait(lambda: self.on("plant/line7/availability") or self.client.is_connected(), 10, "subscriber not connected")
        time.sleep(0.5)  # subscribed, and the subscription saved by the broker

    def _message(self, client, userdata, m) -> None:
        text = m.payload.decode()
        payload = json.loads(text) if text.startswith("{") else text
        with self.lock:
            self.got.append((m.topic, payload, m.qos, m.retain))

    def on(self, topic: str) -> list:
        with self.lock:
            return [p for t, p, _, _ in self.got if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def _line(frame_id: int, camera: str = "cam-a", label: str = "OK") -> dict:
    return {
        "run": "r1",
        "frame_id": frame_id,
        "camera": camera,
        "label": label,
        "bundle_id": "b1",
        "settings": SETTINGS,
    }


def test_results_reach_a_tls_broker_with_a_password_and_survive_its_kill(broker, pki, tmp_path, caplog):
    sub = Subscriber(broker.port, pki)
    metrics = Metrics()
    sink = parse_sink(f"mqtts://127.0.0.1:{broker.port}/plant", metrics, 256, serve=_settings(pki, tmp_path))
    sink.start()
    _wait(sink.client.is_connected, 10, "sink never connected over TLS")
    for i in range(1, 11):
        sink.offer(_line(i))
    sink.offer({"run": "r1", "frame_id": 3, "camera": "cam-a", "label": "EXPLANATION", "explanation": {"text": "x"}})
    _wait(lambda: len(sub.on("plant/line7/cam-a/result")) >= 10, 10, "first results not delivered")
    broker.kill()  # SIGKILL: no goodbye, no save beyond the last second's
    _wait(lambda: not sink.client.is_connected(), 10, "sink did not notice the broker dying")
    for i in range(11, 31):
        sink.offer(_line(i))
    time.sleep(0.5)
    broker.start()  # same port, the sessions of the last autosave
    for i in range(31, 41):
        sink.offer(_line(i))
    _wait(lambda: len({r["frame_id"] for r in sub.on("plant/line7/cam-a/result")}) >= 40, 20, "results lost")
    sink.close()
    _wait(lambda: "offline" in sub.on("plant/line7/availability"), 5, "no offline at shutdown")
    sub.close()

    results = sub.on("plant/line7/cam-a/result")
    assert {r["frame_id"] for r in results} == set(range(1, 41))
    assert all("settings" not in r and r["bundle_id"] == "b1" for r in results)  # compact: settings in the status
    assert all(qos == 1 for t, _, qos, _ in sub.got if t.endswith("/result"))
    statuses = sub.on("plant/line7/cam-a/status")
    assert statuses[0]["state"] == "online" and statuses[0]["settings"] == SETTINGS and statuses[0]["version"]
    assert statuses[0]["client_id"] == "press-7-cam" and statuses[0]["camera"] == "cam-a"
    assert statuses[-1]["state"] == "offline" and statuses[-1]["run"] == "r1"
    assert {x["explanation"]["text"] for x in sub.on("plant/line7/cam-a/explanation")} == {"x"}  # QoS 1: once or more
    assert sub.on("plant/line7/availability")[0] == "online" and sub.on("plant/line7/availability")[-1] == "offline"
    value = metrics.registry.get_sample_value
    assert value("lineside_sink_failures_total", {"sink": sink.label}) is None
    assert value("lineside_sink_drops_total", {"sink": sink.label}) is None
    assert PASSWORD not in caplog.text and PASSWORD not in sink.label


def test_the_broker_announces_offline_when_serve_dies_without_goodbye(broker, pki, tmp_path):
    """The last will: a sink process killed with SIGKILL leaves a retained "offline" written by the broker."""
    code = (
        "import sys, time\n"
        "from runtime.serve.interfaces.metrics import Metrics\n"
        "from runtime.serve.results.mqtt import MqttOptions, from_spec\n"
        "from pathlib import Path\n"
        "pki = Path(sys.argv[2])\n"
        "o = MqttOptions(line='line7', username=sys.argv[3], password=sys.argv[4], ca=pki / 'ca.crt',\n"
        "                cert=pki / 'client.crt', key=pki / 'client.key')\n"
        "sink = from_spec(f'mqtts://127.0.0.1:{sys.argv[1]}/plant', Metrics(), 8, o)\n"
        "sink.start()\n"
        "while not sink.client.is_connected(): time.sleep(0.05)\n"
        "time.sleep(0.3)\n"
        "print('connected', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(broker.port), str(pki), USER, PASSWORD],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "connected"
        sub = Subscriber(broker.port, pki, "plant/line7/availability")
        assert sub.on("plant/line7/availability") == ["online"]  # retained: a newcomer learns it at once
        proc.send_signal(signal.SIGKILL)
        _wait(lambda: "offline" in sub.on("plant/line7/availability"), 10, "no last will after SIGKILL")
        sub.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_a_wrong_password_is_logged_and_its_records_counted(broker, pki, tmp_path, caplog):
    metrics = Metrics()
    options = MqttOptions.of(_settings(pki, tmp_path, mqtt_password_file=None, mqtt_password="wrong"))
    sink = from_spec(
        f"mqtts://127.0.0.1:{broker.port}/plant", metrics, 16, MqttOptions(**{**options.__dict__, "drain_s": 0.5})
    )
    with caplog.at_level("WARNING", "lineside.serve"):
        sink.start()
        for i in range(3):
            sink.offer(_line(i))
        _wait(lambda: "refused the connection" in caplog.text, 10, "refusal not logged")
        sink.close()
    assert "wrong" not in caplog.text
    assert metrics.registry.get_sample_value("lineside_sink_failures_total", {"sink": sink.label}) == 3


@pytest.mark.parametrize(
    "spec, settings, message",
    [
        ("mqtt://u:hunter2@host", {}, "use mqtt://HOST:PORT/PREFIX"),
        ("mqtt://host:99999/plant", {}, "the port must be a number in 1..65535"),
        ("mqtt://host/plant/+", {}, "may not hold +, # or empty levels"),
        ("mqtt://host/$SYS/plant", {}, "nor start with $"),
        ("mqtt://host/plant", {"mqtt_line": "a/b"}, "setting mqtt_line"),
        ("mqtt://host/plant", {"mqtt_ca": "ca.crt"}, "need TLS: write the sink as mqtts://"),
        ("mqtts://host/plant", {"mqtt_ca": "/no/such/ca.crt"}, "setting mqtt_ca: /no/such/ca.crt is not a file"),
        ("mqtts://host/plant", {"mqtt_key": "k.pem"}, "setting mqtt_key: needs mqtt_cert"),
        ("mqtt://host/plant", {"mqtt_password": "x", "mqtt_password_file": "p"}, "give one of them, not both"),
        ("mqtt://host/plant", {"mqtt_password_file": "/no/such/file"}, "setting mqtt_password_file: cannot read"),
    ],
)
def test_bad_mqtt_settings_are_refused_with_the_setting_named(spec, settings, message):
    with pytest.raises(ValueError) as e:
        parse_sink(
            spec,
            Metrics(),
            8,
            serve=ServeSettings(
                **{
                    k: Path(v) if k != "mqtt_line" and "file" in k or k in ("mqtt_ca", "mqtt_key") else v
                    for k, v in settings.items()
                }
            ),
        )
    assert message in str(e.value) and "hunter2" not in str(e.value)


def test_qos_0_records_published_while_the_broker_is_away_are_counted_failures():
    metrics = Metrics()
    sink = from_spec(f"mqtt://127.0.0.1:{free_port()}/plant", metrics, 16, MqttOptions(qos=0, drain_s=0.2))
    sink.start()
    for i in range(4):
        sink.offer(_line(i))
    sink.close()
    assert metrics.registry.get_sample_value("lineside_sink_failures_total", {"sink": sink.label}) == 4


@pytest.fixture(scope="module")
def strangers(tmp_path_factory) -> Path:
    """Another CA's certificates: a broker whose certificate that CA signed is one ours does not trust."""
    return make_pki(tmp_path_factory.mktemp("strangers"))


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """Certificates whose broker certificate is for another host only (not 127.0.0.1, not localhost)."""
    return make_pki(tmp_path_factory.mktemp("elsewhere"), "DNS:broker.plant.example")


@pytest.mark.parametrize(
    "case, reason",
    [
        ("password", "authentication refused for user 'line-7' (Not authorized): check mqtt_username and"),
        ("ca", "certificate not trusted: the broker's certificate is not signed by mqtt_ca"),
        ("name", "name mismatch: the broker's certificate is not for '127.0.0.1'"),
    ],
)
def test_an_mqtt_failure_names_its_reason_in_the_log_and_the_status(
    case, reason, pki, strangers, elsewhere, tmp_path, caplog
):
    """paho reports these as "Unspecified error" or not at all; what to fix must be said."""
    served_by = {"password": pki, "ca": strangers, "name": elsewhere}[case]
    ours = elsewhere if case == "name" else pki
    kw = {"mqtt_password_file": None, "mqtt_password": "wrong"} if case == "password" else {}
    settings = _settings(ours, tmp_path, **kw)
    with Broker(tmp_path, served_by) as broker:
        sink = parse_sink(f"mqtts://127.0.0.1:{broker.port}/plant", Metrics(), 8, serve=settings)
        with caplog.at_level("WARNING", "lineside.serve"):
            sink.start()
            try:
                _wait(lambda: reason in caplog.text, 10, f"{case}: reason not logged: {caplog.text}")
                assert reason in sink.condition()
            finally:
                sink.close(1.0)
    assert "Unspecified error" not in caplog.text and "wrong" not in caplog.text
    assert caplog.text.count("\n") <= 6, caplog.text  # one line per attempt, not one per callback


def test_api_status_names_why_a_sink_delivers_nothing(controlled, strangers, pki, tmp_path):
    from runtime.detect.detector import Detector
    from runtime.serve import Server
    from tests.serving import http_get, parts_folder, serve_settings

    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    with Broker(tmp_path, strangers) as broker:
        spec = f"mqtts://127.0.0.1:{broker.port}/plant"
        mqtt = {k: v for k, v in _settings(pki, tmp_path).__dict__.items() if k.startswith("mqtt_")}
        settings = serve_settings(controlled, parts_folder(tmp_path / "f", 2), tmp_path, loop=True, sink=[spec], **mqtt)
        server = Server(settings, detector=detector).start()
        try:
            wait = time.time() + 10
            while True:
                sinks = json.loads(http_get(server.web.port, "/api/status")[1])["sinks"]
                if sinks and not sinks[0]["ok"] or time.time() > wait:
                    break
                time.sleep(0.1)
        finally:
            server.shutdown()
    assert sinks[0]["sink"] == spec and not sinks[0]["ok"], sinks
    assert sinks[0]["problem"].startswith("certificate not trusted"), sinks
