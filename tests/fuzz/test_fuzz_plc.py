"""PLC writes against a real serve (one per module: a live line camera, trigger=software, its OPC UA server with
the handshake on loopback, anonymous there) from a real asyncua client as the PLC: the PLC's own nodes written
with generated variants of every type (strings, doubles, negative and huge ints, bytes, null), handshakes out of
order (an acknowledgement with no result, a trigger raised twice or while results wait, part ids of odd unicode
and 1,000 characters), and writes to the nodes only serve writes (the result, the state, the System folder).
A write of the wrong type, or to a node the PLC only reads, is refused with a Bad status; serve stays healthy
and its conversation goes on; nothing in the log carries a traceback; and every trigger serve took is exactly
one result line, every result the PLC was shown one of those lines, none invented."""

from __future__ import annotations

import collections
import datetime
import http.client
import logging
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.frames.sources import FrameSource
from runtime.serve.results.plc.opcua_handshake import INPUTS, OUTPUTS
from runtime.serve.results.plc.opcua_system import NODES
from runtime.serve.results.plc.plc import LoopThread
from tests.brokers import free_port
from tests.controlled import CATEGORY, part
from tests.fuzz.invariants import Captured
from tests.serving import DEFECT, result_lines, wait_for

asyncua = pytest.importorskip("asyncua")
ua = asyncua.ua

pytestmark = pytest.mark.fuzz

BOUND = 4  # plc_results: small, so a PLC that never acknowledges fills the queue within an example
SYSTEM = tuple(NODES)
READ_ONLY = {name: kind for name, (kind, _) in OUTPUTS.items()} | {
    f"System.{n}": kind for n, (kind, _) in NODES.items()
}
VARIANTS = {  # every variant type a PLC could send, with values that fit its encoding
    "Boolean": st.booleans(),
    "SByte": st.integers(-128, 127),
    "Byte": st.integers(0, 255),
    "Int16": st.integers(-(2**15), 2**15 - 1),
    "UInt16": st.integers(0, 2**16 - 1),
    "Int32": st.integers(-(2**31), 2**31 - 1),
    "UInt32": st.integers(0, 2**32 - 1),
    "Int64": st.integers(-(2**63), 2**63 - 1),
    "UInt64": st.integers(0, 2**64 - 1),
    "Float": st.floats(width=32),
    "Double": st.floats(),
    "String": st.text(max_size=40) | st.sampled_from(["", "1", "true", "-1", "x" * 1000]),
    "ByteString": st.binary(max_size=40),
}
ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ["", " ", "SN-\u00e9\u4e2d\U0001f600", "\u202eRTL", "a\x00b", "\ufeff", "x" * 1000, "\n" * 5]
)


class Line(FrameSource):
    """A live camera: a part every 10 ms, every third one defective."""

    live = True

    def __init__(self):
        super().__init__("line-camera")
        self.n = 0

    def open(self) -> None:
        pass

    def read(self):
        time.sleep(0.01)
        self.n += 1
        return True, part(red_box=DEFECT if self.n % 3 == 0 else None), ""


class Plc:
    """serve's handshake and System nodes through a real asyncua client on a loop of its own."""

    def __init__(self, port: int):
        self.loop = LoopThread("fuzz-plc")
        self.loop.start()
        self.client = asyncua.Client(f"opc.tcp://127.0.0.1:{port}/lineside", timeout=10)
        self.run(self.client.connect())
        ns = self.run(self.client.get_namespace_index("urn:lineside"))
        names = {n: f"Lineside.0.{n}" for n in (*INPUTS, *OUTPUTS)} | {f"System.{n}": f"System.{n}" for n in SYSTEM}
        self.nodes = {n: self.client.get_node(ua.NodeId(ident, ns)) for n, ident in names.items()}
        self.parts: set[str] = set()  # every part id written with a good status
        self.shown: dict[int, str] = {}  # ResultSeq -> ResultPartId, as the PLC was shown them

    def run(self, coroutine, timeout: float = 15.0):
        return self.loop.run_sync(coroutine, timeout)

    def write(self, name: str, value) -> ua.StatusCode:
        """One node's Value written as a DataValue (value: a Variant, or None for a DataValue with no value)."""
        data = ua.DataValue(value) if value is not None else ua.DataValue()
        params = ua.WriteParameters()
        params.NodesToWrite = [ua.WriteValue(self.nodes[name].nodeid, ua.AttributeIds.Value, Value=data)]
        (status,) = self.run(self.client.uaclient.write(params))
        if status.is_good() and name == "TriggerPartId":
            self.parts.add(value.Value)
        return status

    def read(self, *names: str) -> dict:
        values = self.run(self.client.read_values([self.nodes[n] for n in names]))
        return dict(zip(names, values))

    def look(self) -> dict:
        """The result fields now; the presented result remembered, to be found in the results log."""
        seen = self.read("ResultReady", "ResultId", "ResultSeq", "ResultPartId", "Pending", "Busy")
        if seen["ResultReady"] and seen["ResultSeq"]:
            self.shown.setdefault(seen["ResultSeq"], seen["ResultPartId"])
        return seen

    def close(self) -> None:
        try:
            self.run(self.client.disconnect())
        finally:
            self.loop.stop()


@pytest.fixture(scope="module")
def served(controlled, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-plc")
    captured = Captured()
    logging.getLogger().addHandler(captured)
    port = free_port()
    settings = Settings.of(
        source="line-camera",
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        trigger="software",
        results=tmp / "results.jsonl",
        sink=[f"opcua-server://127.0.0.1:{port}/lineside?handshake=1"],
        plc_results=BOUND,
    )
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp / "text")
    server = Server(settings, detector=detector, source=Line()).start()
    plc = None
    try:
        wait_for(lambda: server.web.port, 20, "serve's port")
        plc = Plc(port)
        yield server, plc, captured
    finally:
        if plc is not None:
            plc.close()
        server.shutdown()
        logging.getLogger().removeHandler(captured)


def _variant(kind: str, value) -> ua.Variant:
    return ua.Variant(value, getattr(ua.VariantType, kind))


@st.composite
def variants(draw) -> tuple[str, ua.Variant]:
    kind = draw(st.sampled_from(sorted(VARIANTS)))
    return kind, _variant(kind, draw(VARIANTS[kind]))


@st.composite
def actions(draw):
    """One PLC write, and what the server must answer: 'good' (the node's own type, on a node the PLC writes)
    or 'bad' (any other type, no value at all, or a node only serve writes)."""
    what = draw(
        st.sampled_from(
            ["input", "input", "readonly", "readonly", "trigger", "trigger", "ack", "ack", "recipe", "null"]
        )
    )
    if what == "input":  # a PLC node, any variant type: its own type is taken, any other refused
        name = draw(st.sampled_from(sorted(INPUTS)))
        kind, variant = draw(variants())
        return name, variant, "good" if kind == INPUTS[name][0] else "bad"
    if what == "readonly":  # a node only serve writes, in its own type (any other is refused as a mismatch anyway)
        name = draw(st.sampled_from(sorted(READ_ONLY)))
        kind = READ_ONLY[name]
        if kind == "DateTime":
            return name, _variant(kind, draw(st.datetimes(timezones=st.just(datetime.timezone.utc)))), "bad"
        return name, _variant(kind, draw(VARIANTS[kind])), "bad"
    if what == "trigger":  # the right types, in any order: raised twice, while busy, while results wait
        if draw(st.booleans()):
            return "TriggerPartId", _variant("String", draw(ODD_TEXT)), "good"
        return "Trigger", _variant("Boolean", draw(st.booleans())), "good"
    if what == "ack":  # the presented id, an old one, none, or any
        return "ResultAck", draw(st.sampled_from(["current", "current", 0, 1, 2**32 - 1]) | st.integers(0, 70)), "good"
    if what == "recipe":  # no recipes here: any index is refused by the handshake, never by a crash
        return "RecipeIndex", _variant("UInt16", draw(st.integers(0, 2**16 - 1))), "good"
    name = draw(st.sampled_from(sorted(INPUTS) + ["ResultId", "State"]))
    return name, draw(st.none() | st.just(ua.Variant())), "bad"  # a DataValue with no value, or a Null variant


def _healthy(server) -> None:
    assert server.failure() is None, server.failure()
    connection = http.client.HTTPConnection("127.0.0.1", server.web.port, timeout=20)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == 200, response.read()[:200]
    finally:
        connection.close()


def test_any_plc_write_is_taken_or_refused_with_a_bad_status_and_serve_goes_on(served):
    server, plc, captured = served

    @given(st.lists(actions(), min_size=1, max_size=8))
    def one(steps):
        seen = len(captured.bad)
        for name, value, expected in steps:
            if value == "current":
                value = plc.look()["ResultId"]
            if isinstance(value, int):
                value = _variant("UInt32", value)
            status = plc.write(name, value)
            assert status.is_good() == (expected == "good"), (name, value, status)
            plc.look()
        time.sleep(0.03)  # a few of serve's steps over what was written
        plc.look()
        _healthy(server)
        assert not captured.bad[seen:], captured.bad[seen:]

    one()


def test_every_node_serve_writes_refuses_the_plcs_write_in_its_own_type(served):
    """Each of them once, beside the fuzz's random picks: no read-only node may be left writable by chance."""
    server, plc, _ = served
    own = {"Boolean": True, "String": "x", "UInt16": 1, "UInt32": 7, "Int64": 7, "Double": 0.5}
    own["DateTime"] = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    taken = [name for name, kind in READ_ONLY.items() if not plc.write(name, _variant(kind, own[kind])).is_bad()]
    assert not taken, f"the PLC could write {taken}"
    _healthy(server)


def test_every_trigger_taken_is_one_result_line_and_every_result_shown_is_one_of_them(served):
    server, plc, captured = served
    for name, value in (("Trigger", False), ("TriggerPartId", "")):
        assert plc.write(name, _variant(INPUTS[name][0], value)).is_good()
    deadline = time.monotonic() + 60
    while True:  # every result acknowledged, in order, until none waits and no part is in work
        seen = plc.look()
        if not seen["Pending"] and not seen["Busy"]:
            break
        assert time.monotonic() < deadline, f"results never all acknowledged; the PLC reads {seen}"
        if seen["ResultReady"]:
            assert plc.write("ResultAck", _variant("UInt32", seen["ResultId"])).is_good()
        time.sleep(0.02)
    accepted = plc.read("TriggersAccepted")["TriggersAccepted"]
    assert accepted > 0, "no trigger was ever taken: the fuzz did not reach the handshake"
    wait_for(lambda: len(result_lines(server)) >= accepted, 30, f"{accepted} result lines")
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    triggers = collections.Counter(x.get("trigger_id") for x in lines)
    assert len(lines) == accepted and all(triggers.values()) and max(triggers.values()) == 1, triggers
    assert None not in triggers and "" not in triggers  # each line a trigger's
    assert {x.get("part_id") or "" for x in lines} <= plc.parts | {""}  # no part id invented
    by_seq = {x["seq"]: x.get("part_id") or "" for x in lines}
    assert plc.shown and all(by_seq.get(seq) == shown for seq, shown in plc.shown.items()), plc.shown
    _healthy(server)
    assert not captured.bad, captured.bad[:5]


# --- the same over Modbus: serve the client, polling a PLC's registers that hold generated values ----------

H = 200  # the handshake block's first register: serve's H+0..H+12, the PLC's H+16..H+25


class ModbusPlc:
    """The PLC's memory (plc-sim's pymodbus server), written and read through a loopback client."""

    def __init__(self, port: int):
        from lineside.plcsim import ModbusPeer

        self.peer = ModbusPeer(f"127.0.0.1:{port}", H, 1)
        self.peer.connect()
        self.parts: set[str] = set()  # every part id the PLC's registers held, as serve reads them
        self.shown: dict[int, str] = {}  # ResultSeq -> the part id of that result, as the PLC was shown them

    def write(self, offset: int, values: list[int]) -> None:
        answer = self.peer.memory.write_registers(H + offset, values, device_id=1)
        assert not answer.isError(), answer
        if offset == 18:
            from runtime.serve.results.plc.modbus_handshake import part_id

            self.parts.add(part_id(values))

    def look(self) -> list[int]:
        """serve's block now (H+0..H+12)."""
        answer = self.peer.memory.read_holding_registers(H, count=13, device_id=1)
        assert not answer.isError(), answer
        return answer.registers

    def close(self) -> None:
        self.peer.close()


@pytest.fixture(scope="module")
def served_modbus(controlled, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-plc-modbus")
    captured = Captured()
    logging.getLogger().addHandler(captured)
    port = free_port()
    plc = ModbusPlc(port)
    settings = Settings.of(
        source="line-camera",
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        trigger="software",
        results=tmp / "results.jsonl",
        sink=[f"modbus://127.0.0.1:{port}?unit=1&handshake={H}&poll_ms=5"],
        plc_results=BOUND,
    )
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp / "text")
    server = Server(settings, detector=detector, source=Line()).start()
    try:
        wait_for(lambda: server.web.port and any(plc.look()), 20, "serve's port and its first block")
        yield server, plc, captured
    finally:
        server.shutdown()
        plc.close()
        logging.getLogger().removeHandler(captured)


REGISTER = st.integers(0, 2**16 - 1)


@st.composite
def register_writes(draw) -> tuple[int, list[int] | str]:
    """One write of the PLC's block: Trigger, ResultAck ('current': the presented id) or the part id's registers."""
    what = draw(st.sampled_from(["trigger", "trigger", "ack", "ack", "part", "part", "block"]))
    if what == "trigger":
        return 16, [draw(st.sampled_from([0, 1]) | REGISTER)]
    if what == "ack":
        return 17, draw(st.just("current") | st.lists(REGISTER, min_size=1, max_size=1))
    if what == "part":  # any bytes: non-ASCII, control characters, no NUL at the end
        return 18, draw(st.lists(REGISTER, min_size=8, max_size=8))
    return 16, draw(st.lists(REGISTER, min_size=10, max_size=10))  # the whole block at once


def test_any_register_values_a_plc_holds_leave_serve_healthy(served_modbus):
    server, plc, captured = served_modbus

    @given(st.lists(register_writes(), min_size=1, max_size=8))
    def one(steps):
        seen = len(captured.bad)
        for offset, values in steps:
            if values == "current":
                values = [plc.look()[3]]
            if offset == 16 and len(values) == 10:
                plc.write(16, values[:2])
                plc.write(18, values[2:])
            else:
                plc.write(offset, values)
            _remember(plc, plc.look())
        time.sleep(0.03)  # a few of serve's polls over what was written
        _remember(plc, plc.look())
        _healthy(server)
        assert not captured.bad[seen:], captured.bad[seen:]

    one()


def _remember(plc: ModbusPlc, block: list[int]) -> None:
    if block[0] & 4 and block[3]:  # ResultReady, a ResultId: the presented result's seq (no part id in the block)
        plc.shown.setdefault(block[9] | block[10] << 16, "")


def test_over_modbus_every_trigger_taken_is_one_result_line(served_modbus):
    server, plc, captured = served_modbus
    plc.write(16, [0])
    deadline = time.monotonic() + 60
    while True:  # every result acknowledged until none waits and no part is in work
        block = plc.look()
        if not block[11] and not block[0] & 2:
            break
        assert time.monotonic() < deadline, f"results never all acknowledged; serve's block reads {block}"
        if block[0] & 4:
            plc.write(17, [block[3]])
        time.sleep(0.02)
    accepted = plc.look()[1]  # TriggersAccepted, low 16 bits: far fewer here
    assert accepted > 0, "no trigger was ever taken: the fuzz did not reach the handshake"
    wait_for(lambda: len(result_lines(server)) >= accepted, 30, f"{accepted} result lines")
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    triggers = collections.Counter(x.get("trigger_id") for x in lines)
    assert len(lines) == accepted and max(triggers.values()) == 1, triggers
    assert None not in triggers and "" not in triggers
    assert {x.get("part_id") or "" for x in lines} <= plc.parts | {""}  # no part id invented
    seqs = {x["seq"] for x in lines}
    assert plc.shown and set(plc.shown) <= seqs, sorted(set(plc.shown) - seqs)[:5]
    _healthy(server)
    assert not captured.bad, captured.bad[:5]
