"""The system nodes of serve's OPC UA server (issue 27, item 4), seen by real asyncua clients on loopback: the
OPC 40100 state follows a triggered part (Ready, Executing, Ready) and goes Error when the PLC's result queue
is full or the camera's folder disappears; the diagnostics equal the results log, and ResetDiagnostics zeros
them."""

from __future__ import annotations

import math
import shutil
import threading
import time

import pytest

from lineside.plcsim import UaPeer
from runtime.detect.detector import Detector
from runtime.serve.results.plc.opcua_system import system_state
from runtime.serve.results.plc.plc import LoopThread
from tests.brokers import free_port
from tests.serving import looping_server, result_lines
from tests.test_plc_handshake import _opcua, _serve, _trigger, _until

asyncua = pytest.importorskip("asyncua")
ua = asyncua.ua


def _plc(port: int) -> UaPeer:
    """The PLC: plc-sim's own OPC UA client, connected."""
    plc = UaPeer(f"opcua://127.0.0.1:{port}/lineside")
    plc.connect()
    return plc


def _acknowledge(plc: UaPeer, acked: int = 0):
    """The next presented result (an id other than `acked`), acknowledged."""
    seen = _until(plc, lambda s: s.result_ready and s.result_id != acked, "no new result")
    plc.ack(seen.result_id)
    return seen


def _parts(plc: UaPeer, count: int) -> list:
    received, acked = [], 0
    for i in range(count):
        _until(plc, lambda s: s.trigger_ready, "never ready for the next part")
        assert _trigger(plc, f"SN-{i:02d}")
        received.append(_acknowledge(plc, acked))
        acked = received[-1].result_id
    return received


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


@pytest.fixture
def loop():
    thread = LoopThread("test-opcua-system")
    thread.start()
    yield thread
    thread.stop()


SYSTEM = ("State", "StateReason", "OkCount", "NgCount", "ErrorCount", "TriggersRefused", "InspectionsTimed")
SYSTEM += ("InspectionTimeMinMs", "InspectionTimeAvgMs", "InspectionTimeMaxMs")


class States:
    """Every value System.State takes, in order, from a subscription (a queue, so none is folded away)."""

    def __init__(self):
        self.seen, self.lock = [], threading.Lock()

    def datachange_notification(self, node, value, data) -> None:
        with self.lock:
            self.seen.append(value)

    def list(self) -> list[str]:
        with self.lock:
            return list(self.seen)


class Watcher:
    """A client of its own reading the System nodes (a SCADA beside the PLC)."""

    def __init__(self, thread: LoopThread, port: int):
        self.loop = thread
        self.client = asyncua.Client(f"opc.tcp://127.0.0.1:{port}/lineside", timeout=5)
        thread.run_sync(self.client.connect(), 10)
        self.ns = thread.run_sync(self.client.get_namespace_index("urn:lineside"), 5)
        self.states = States()

    def node(self, name: str):
        return self.client.get_node(f"ns={self.ns};s=System.{name}")

    def read(self) -> dict:
        return dict(zip(SYSTEM, self.loop.run_sync(self.client.read_values([self.node(n) for n in SYSTEM]), 5)))

    def subscribe(self) -> None:
        async def go():
            sub = await self.client.create_subscription(5, self.states)
            await sub.subscribe_data_change(self.node("State"), queuesize=1000)

        self.loop.run_sync(go(), 10)

    def reset(self) -> None:
        folder = self.client.get_node(f"ns={self.ns};s=System")
        self.loop.run_sync(folder.call_method(ua.NodeId("System.ResetDiagnostics", self.ns)), 5)

    def until(self, condition, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while not condition(seen := self.read()):
            assert time.monotonic() < deadline, f"{what}; System reads {seen}"
            time.sleep(0.02)
        return seen

    def close(self) -> None:
        self.loop.run_sync(self.client.disconnect(), 5)


def _diagnostics(lines: list[dict]) -> dict:
    """What the diagnostics should read for these verdict lines."""
    times = [x["timings_ms"]["total"] for x in lines if (x.get("timings_ms") or {}).get("total") is not None]
    return {
        "OkCount": sum(x["label"] == "OK" for x in lines),
        "NgCount": sum(x["label"] == "NG" for x in lines),
        "ErrorCount": sum(x["label"] == "ERROR" for x in lines),
        "InspectionsTimed": len(times),
        "InspectionTimeMinMs": min(times),
        "InspectionTimeAvgMs": sum(times) / len(times),
        "InspectionTimeMaxMs": max(times),
    }


def test_the_state_follows_each_part_and_the_diagnostics_equal_the_results_log(controlled, detector, tmp_path, loop):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port))
    plc, watcher = _plc(port), Watcher(loop, port)
    try:
        watcher.until(lambda s: s["State"] == "Ready", "never Ready")
        watcher.subscribe()
        time.sleep(0.2)  # the subscription's first notification: Ready
        received = _parts(plc, 21)
        seen = watcher.until(lambda s: s["OkCount"] + s["NgCount"] + s["ErrorCount"] == 21, "not all counted")
        time.sleep(0.2)
        states = watcher.states.list()
        watcher.reset()
        zeroed = watcher.read()
    finally:
        plc.close()
        watcher.close()
        server.shutdown()
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    assert len(received) == len(lines) == 21
    want = _diagnostics(lines)
    assert {k: seen[k] for k in ("OkCount", "NgCount", "ErrorCount", "InspectionsTimed")} == {
        k: want[k] for k in ("OkCount", "NgCount", "ErrorCount", "InspectionsTimed")
    }
    for name in ("InspectionTimeMinMs", "InspectionTimeAvgMs", "InspectionTimeMaxMs"):
        assert math.isclose(seen[name], want[name], rel_tol=1e-9), (name, seen[name], want[name])
    assert want["ErrorCount"] and want["NgCount"] and want["OkCount"]  # the camera's mix, each counted
    assert seen["State"] == "Ready" and seen["StateReason"] == "" and seen["TriggersRefused"] == 0
    assert states[0] == "Ready" and set(states) == {"Ready", "Executing"}, states
    assert states == ["Ready", "Executing"] * 21 + ["Ready"], states  # each part: Executing, then Ready again
    assert {k: zeroed[k] for k in ("OkCount", "NgCount", "ErrorCount", "InspectionsTimed", "TriggersRefused")} == {
        "OkCount": 0,
        "NgCount": 0,
        "ErrorCount": 0,
        "InspectionsTimed": 0,
        "TriggersRefused": 0,
    }
    assert (zeroed["InspectionTimeMinMs"], zeroed["InspectionTimeAvgMs"], zeroed["InspectionTimeMaxMs"]) == (-1, -1, -1)


def test_a_full_plc_queue_is_an_error_with_its_reason_and_refusals_count(controlled, detector, tmp_path, loop):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port), plc_results=2)
    plc, watcher = _plc(port), Watcher(loop, port)
    try:
        for i in range(2):
            _until(plc, lambda s: s.trigger_ready, "never ready")
            assert _trigger(plc, f"P{i}")
        seen = watcher.until(lambda s: s["State"] == "Error", "a full queue never an Error")
        assert "PLC result queue full" in seen["StateReason"] and "plc_results=2" in seen["StateReason"], seen
        assert not _trigger(plc, "P2")
        assert watcher.until(lambda s: s["TriggersRefused"] == 1, "the refusal not counted")["State"] == "Error"
        watcher.reset()
        assert watcher.read()["TriggersRefused"] == 0  # zeroed, though the handshake's own counter stays
        _acknowledge(plc)
        seen = watcher.until(lambda s: s["State"] == "Ready", "a free place never Ready again")
        assert seen["StateReason"] == "" and plc.read().refused == 1
    finally:
        plc.close()
        watcher.close()
        server.shutdown()


def test_the_state_is_an_error_naming_the_folder_when_the_cameras_folder_disappears(
    controlled, detector, tmp_path, loop
):
    port = free_port()
    folder, server = looping_server(controlled, detector, tmp_path, f"opcua-server://127.0.0.1:{port}/lineside")
    watcher = Watcher(loop, port)
    try:
        watcher.until(lambda s: s["State"] == "Ready" and s["OkCount"] > 0, "never Ready")
        shutil.rmtree(folder)
        seen = watcher.until(lambda s: s["State"] == "Error", "a lost folder never an Error")
    finally:
        watcher.close()
        server.shutdown()
    assert seen["StateReason"].startswith("camera 0: ") and str(folder) in seen["StateReason"], seen


def test_the_state_in_words_of_opc_40100():
    """The rules alone: stopping beats everything, errors beat work, work beats idle."""

    class View:
        def __init__(self, state="Ready", busy=False, why=""):
            self.state, self.busy, self.why = state, busy, why

    assert system_state(False, False, {}, {})["State"] == "Preoperational"
    assert system_state(True, False, {}, {}) == {"StateReason": "waiting for the first camera", "State": "Initialized"}
    assert system_state(True, False, {"0": ("", "")}, {})["State"] == "Initialized"
    assert system_state(True, False, {"0": ("online", "")}, {"0": View()})["State"] == "Ready"
    assert system_state(True, False, {"0": ("online", "")}, {"0": View("Executing", True)})["State"] == "Executing"
    full = system_state(True, False, {"0": ("online", "")}, {"0": View("Full", why="2 results wait")})
    assert full == {"StateReason": "camera 0: PLC result queue full: 2 results wait", "State": "Error"}
    both = system_state(True, False, {"0": ("online", ""), "1": ("degraded", "blind")}, {"0": View("Executing", True)})
    assert both == {"StateReason": "camera 1: blind", "State": "Error"}
    assert system_state(True, True, {"1": ("degraded", "blind")}, {})["State"] == "Halted"


def test_a_subscribed_client_sees_halted_when_serve_stops(loop):
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.results.sinks import parse_sink

    port = free_port()
    sink = parse_sink(f"opcua-server://127.0.0.1:{port}/lineside", Metrics(), 4)
    sink.start()
    watcher = Watcher(loop, port)
    try:
        assert watcher.read()["State"] == "Initialized"  # listening, no camera has said it is ready
        watcher.subscribe()
        time.sleep(0.2)
    finally:
        sink.close()
        time.sleep(0.2)
    states = watcher.states.list()
    assert states == ["Initialized", "Halted"], states
