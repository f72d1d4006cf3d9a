"""The PLC handshake (issue 27, items 1, 2 and 6): the state machine alone, then a real serve over OPC UA with a
real asyncua client as the PLC on loopback: 100 parts whose results equal the results log, a full queue that
refuses the trigger; a real pymodbus server as the PLC; and `lineside plc-sim`, the simulator, run as its
command against a real serve: 100 parts over OPC UA, a handful as the Modbus PLC, a PLC away with 5 results
pending that gets them in order and none twice, and the exit codes of a serve that breaks the rules or is
not there."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.handshake import REASONS, Handshake, Refused, reason_code
from runtime.serve.plc import LoopThread
from runtime.serve.sources import FrameSource
from tests.brokers import free_port
from tests.controlled import CATEGORY, part
from tests.serving import DEFECT, result_lines

asyncua = pytest.importorskip("asyncua")  # the plant extra is part of dev; test_plc.py fails loudly without it
ua = asyncua.ua


# --- the state machine, no transport ---------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _line(label: str, frame_id: int, trigger: str = "", **more) -> dict:
    return {"label": label, "frame_id": frame_id, "image_score": 0.5, "trigger_id": trigger, **more}


def _machine(bound: int = 3, timeout_s: float = 5.0):
    given = []
    clock = Clock()

    def submit(part_id):
        given.append(part_id)
        return f"plc-{len(given)}"

    return Handshake(bound, submit, timeout_s, clock), given, clock


def test_one_part_through_the_handshake():
    machine, given, _ = _machine()
    assert machine.view().trigger_ready and machine.view().state == "Ready"
    assert machine.trigger_level(True, "SN-1") == "plc-1" and given == ["SN-1"]
    view = machine.view()
    assert not view.trigger_ready and view.busy and view.state == "Executing" and not view.result_ready
    assert machine.trigger_level(True, "SN-1") is None  # held high: no second trigger
    machine.trigger_level(False)
    assert not machine.view().trigger_ready  # still busy with SN-1
    machine.result(_line("NG", 7, "plc-1", part_id="SN-1", seq=41))
    view = machine.view()
    assert view.trigger_ready and not view.busy and view.result_ready and view.pending == 1
    assert (view.result.id, view.result.verdict, view.result.code, view.result.reject) == (1, "NG", 1, True)
    assert (view.result.frame_id, view.result.part_id, view.result.seq, view.result.reason_code) == (7, "SN-1", 41, 0)
    assert not machine.ack(2) and machine.view().result_ready  # not the presented id: nothing happens
    assert machine.ack(1) and not machine.view().result_ready and machine.view().result is None
    assert not machine.ack(1) and machine.delivered == 1  # acknowledged twice: delivered once


def test_results_wait_in_order_and_a_full_queue_refuses_the_trigger_saying_why():
    machine, _, _ = _machine(bound=3)
    for i in range(1, 4):
        machine.trigger_level(True)
        machine.trigger_level(False)
        machine.result(_line("OK" if i % 2 else "NG", i, f"plc-{i}"))
    view = machine.view()
    assert view.state == "Full" and not view.trigger_ready and view.pending == 3
    assert "3 results wait for the PLC's acknowledgement (plc_results=3)" in view.why
    with pytest.raises(Refused, match="plc_results=3"):
        machine.trigger_level(True)
    assert machine.view().refused == 1
    machine.trigger_level(False)
    seen = []
    while machine.view().result_ready:
        head = machine.view().result
        seen.append((head.id, head.frame_id))
        machine.ack(head.id)
    assert seen == [(1, 1), (2, 2), (3, 3)] and machine.view().trigger_ready


def test_an_error_is_a_reject_with_its_reason_and_a_silent_part_times_out():
    machine, _, clock = _machine(timeout_s=5.0)
    machine.trigger_level(True)
    machine.result(_line("ERROR", 1, "plc-1", error="frame could not be decoded: broken JPEG"))
    head = machine.view().result
    assert (head.verdict, head.reject, head.reason_code) == ("ERROR", True, REASONS["frame"])
    assert "broken JPEG" in head.reason
    machine.trigger_level(False)
    machine.trigger_level(True)  # plc-2: no result comes
    clock.now += 4.9
    machine.tick()
    assert machine.view().busy
    clock.now += 0.2
    machine.tick()
    view = machine.view()
    assert not view.busy and view.pending == 2
    machine.ack(view.result.id)
    late = machine.view().result
    assert (late.verdict, late.reject, late.reason_code, late.trigger_id) == (
        "ERROR",
        True,
        REASONS["timeout"],
        "plc-2",
    )
    assert machine.result(_line("OK", 2, "plc-2")) is None  # its verdict came too late: in the log, not presented
    assert reason_code("inference failed: CUDA error") == REASONS["inference"] and reason_code(None) == 0


def test_without_a_trigger_side_results_are_still_presented():
    machine = Handshake(2)
    view = machine.view()
    assert view.state == "Blocked" and not view.trigger_ready and "trigger setting" in view.why
    with pytest.raises(Refused):
        machine.trigger_level(True)
    for i in range(3):  # a hardware trigger's parts: the third finds the queue full and is only in the log
        machine.result(_line("NG", i + 1))
    assert machine.view().pending == 2 and "1 results came while the queue was full" in machine.view().why


# --- serve over OPC UA, a real client as the PLC ----------------------------------------------------------


class Line(FrameSource):
    """A live camera: a part every 10 ms, every third one defective, every seventh one undecodable."""

    live = True

    def __init__(self):
        super().__init__("line-camera")
        self.n = 0

    def open(self) -> None:
        pass

    def read(self):
        time.sleep(0.01)
        self.n += 1
        if self.n % 7 == 0:
            return True, None, "truncated frame"
        return True, part(red_box=DEFECT if self.n % 3 == 0 else None), ""


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


@pytest.fixture
def loop():
    thread = LoopThread("test-plc")
    thread.start()
    yield thread
    thread.stop()


def _serve(controlled, detector, tmp_path, sink: str, **kw) -> Server:
    """A software-triggered serve on the controlled line whose one sink is `sink` (the PLC transport)."""
    settings = Settings.of(
        source="line-camera",
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        trigger="software",
        results=tmp_path / "results.jsonl",
        sink=[sink],
        **kw,
    )
    return Server(settings, detector=detector, source=Line()).start()


def _opcua(port: int) -> str:
    return f"opcua-server://127.0.0.1:{port}/lineside?handshake=1"


FIELDS = ("ResultReady", "ResultId", "ResultVerdict", "ResultReject", "ResultReason", "ResultFrameId")
FIELDS += ("ResultPartId", "ResultSeq", "TriggerReady", "TriggersAccepted", "TriggersRefused", "State", "StateWhy")
FIELDS += ("Pending",)


class UaPlc:
    """The PLC's side of the handshake, as its program would run it, over a real OPC UA client."""

    def __init__(self, loop: LoopThread, port: int, camera: str = "0"):
        self.loop, self.port, self.camera, self.acked = loop, port, camera, 0
        self.connect()

    def connect(self) -> None:
        self.client = asyncua.Client(f"opc.tcp://127.0.0.1:{self.port}/lineside", timeout=5)
        self.loop.run_sync(self.client.connect(), 10)
        ns = self.loop.run_sync(self.client.get_namespace_index("urn:lineside"), 5)
        self.node = lambda name: self.client.get_node(f"ns={ns};s=Lineside.{self.camera}.{name}")

    def disconnect(self) -> None:
        self.loop.run_sync(self.client.disconnect(), 5)

    def read(self) -> dict:
        values = self.loop.run_sync(self.client.read_values([self.node(n) for n in FIELDS]), 5)
        return dict(zip(FIELDS, values))

    def write(self, name: str, value, kind: str) -> None:
        self.loop.run_sync(
            self.node(name).write_value(ua.DataValue(ua.Variant(value, getattr(ua.VariantType, kind)))), 5
        )

    def until(self, condition, what: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while not condition(seen := self.read()):
            assert time.monotonic() < deadline, f"{what}; the PLC reads {seen}"
            time.sleep(0.003)
        return seen

    def trigger(self, part_id: str) -> bool:
        """Raise Trigger with a part id, held until lineside counts it: True when taken, False when refused."""
        before = self.read()
        counts = lambda s: (s["TriggersAccepted"], s["TriggersRefused"])  # noqa: E731
        self.write("TriggerPartId", part_id, "String")
        self.write("Trigger", True, "Boolean")
        seen = self.until(lambda s: counts(s) != counts(before), "trigger neither taken nor refused")
        self.write("Trigger", False, "Boolean")
        return seen["TriggersAccepted"] != before["TriggersAccepted"]

    def result(self) -> dict:
        """The presented result, acknowledged."""
        seen = self.until(lambda s: s["ResultReady"] and s["ResultId"] != self.acked, "no new result")
        self.write("ResultAck", seen["ResultId"], "UInt32")
        self.acked = seen["ResultId"]
        return seen

    def part(self, part_id: str) -> dict:
        self.until(lambda s: s["TriggerReady"], "never ready for the next part")
        assert self.trigger(part_id)
        return self.result()


def _matches(received: list[dict], lines: list[dict]) -> None:
    """Each result the PLC acknowledged is its line in the results log: same seq, verdict, frame and part."""
    by_seq = {x["seq"]: x for x in lines}
    for got in received:
        line = by_seq[got["ResultSeq"]]
        assert (got["ResultVerdict"], got["ResultFrameId"], got["ResultPartId"]) == (
            line["label"],
            line["frame_id"],
            line.get("part_id", ""),
        )
        assert got["ResultReject"] == (line["label"] != "OK")
        assert got["ResultReason"] == (REASONS["frame"] if line["label"] == "ERROR" else 0)


def test_100_parts_through_the_opcua_handshake_equal_the_results_log(controlled, detector, tmp_path, loop):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port))
    plc = UaPlc(loop, port)
    try:
        received = [plc.part(f"SN-{i:04d}") for i in range(100)]
    finally:
        plc.disconnect()
        server.shutdown()
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    assert len(lines) == 100 and [x["ResultPartId"] for x in received] == [f"SN-{i:04d}" for i in range(100)]
    assert [x["ResultSeq"] for x in received] == [x["seq"] for x in lines]  # in order, each once
    assert len({x["ResultId"] for x in received}) == 100
    _matches(received, lines)
    assert {x["label"] for x in lines} == {"OK", "NG", "ERROR"}  # the camera's mix reached the PLC


def test_a_full_queue_refuses_the_trigger_and_says_why(controlled, detector, tmp_path, loop):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port), plc_results=2)
    plc = UaPlc(loop, port)
    try:
        for i in range(2):
            plc.until(lambda s: s["TriggerReady"], "never ready")
            assert plc.trigger(f"P{i}")
        seen = plc.until(lambda s: s["Pending"] == 2, "two results not pending")
        assert seen["State"] == "Full" and not seen["TriggerReady"] and "plc_results=2" in seen["StateWhy"]
        assert not plc.trigger("P2")  # refused: counted, not inspected
        assert plc.read()["TriggersRefused"] == 1
        first = plc.result()
        seen = plc.until(lambda s: s["TriggerReady"], "a free place never made ready")
        assert seen["State"] == "Ready" and seen["Pending"] == 1 and first["ResultPartId"] == "P0"
    finally:
        plc.disconnect()
        server.shutdown()
    assert [x.get("part_id") for x in result_lines(server)] == ["P0", "P1"]  # P2 never inspected


# --- serve over Modbus TCP, a real pymodbus server as the PLC ---------------------------------------------

H = 200  # the handshake block's first register


async def _modbus_plc(port: int):
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    coils = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    registers = [SimData(0, count=300, values=0, datatype=DataType.REGISTERS)]
    server = ModbusTcpServer(
        SimDevice(id=1, simdata=(coils, list(coils), registers, list(registers))), address=("127.0.0.1", port)
    )
    await server.serve_forever(background=True)
    return server


class ModbusPlc:
    """The PLC: a pymodbus server holding both blocks; its program's reads and writes go through a client."""

    def __init__(self, loop: LoopThread, port: int):
        import pymodbus.client

        self.loop, self.port, self.acked = loop, port, 0
        self.server = loop.run_sync(_modbus_plc(port), 10)
        self.memory = pymodbus.client.ModbusTcpClient("127.0.0.1", port=port, timeout=2)

    def stop(self) -> None:
        self.loop.run_sync(self.server.shutdown(), 10)
        self.memory.close()

    def restart(self) -> None:
        self.server = self.loop.run_sync(_modbus_plc(self.port), 10)

    def read(self) -> dict:
        r = self.memory.read_holding_registers(H, count=13, device_id=1).registers
        names = ("status", "accepted", "refused", "id", "code", "reject", "score", "reason", "frame")
        seen = dict(zip(names, r))
        return seen | {"seq": r[9] | r[10] << 16, "pending": r[11], "ready": bool(r[0] & 1), "result": bool(r[0] & 4)}

    def until(self, condition, what: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while not condition(seen := self.read()):
            assert time.monotonic() < deadline, f"{what}; the PLC holds {seen}"
            time.sleep(0.003)
        return seen

    def trigger(self, part_id: str) -> None:
        from runtime.serve.modbus_handshake import part_registers

        before = self.until(lambda s: s["ready"], "never ready for the next part")
        self.memory.write_registers(H + 18, part_registers(part_id), device_id=1)
        self.memory.write_register(H + 16, 1, device_id=1)
        self.until(lambda s: s["accepted"] != before["accepted"], "trigger not taken")
        self.memory.write_register(H + 16, 0, device_id=1)

    def part(self, part_id: str) -> dict:
        self.trigger(part_id)
        return self.result()

    def result(self) -> dict:
        seen = self.until(lambda s: s["result"] and s["id"] != self.acked, "no new result")
        self.memory.write_register(H + 17, seen["id"], device_id=1)
        self.acked = seen["id"]
        return seen


def test_parts_through_the_modbus_handshake_equal_the_log_and_survive_a_plc_restart(
    controlled, detector, tmp_path, loop
):
    port = free_port()
    plc = ModbusPlc(loop, port)
    server = _serve(controlled, detector, tmp_path, f"modbus://127.0.0.1:{port}?unit=1&handshake={H}&poll_ms=5")
    try:
        received = [plc.part(f"M{i}") for i in range(30)]
        for i in range(30, 33):  # three more, not acknowledged, then the PLC restarts with its memory cleared
            plc.trigger(f"M{i}")
        plc.until(lambda s: s["pending"] == 3, "three results not pending")
        plc.stop()
        time.sleep(2)
        plc.restart()
        plc.memory.connect()
        waiting = [plc.result() for _ in range(3)]  # rewritten into the fresh memory, oldest first
        plc.until(lambda s: s["pending"] == 0 and not s["result"], "acknowledged results still pending")
    finally:
        server.shutdown()
        plc.stop()
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    assert [x["seq"] for x in received + waiting] == [x["seq"] for x in lines] and len(lines) == 33
    assert [x.get("part_id") for x in lines] == [f"M{i}" for i in range(33)]
    codes = {"OK": 0, "NG": 1, "ERROR": 2}
    for got, line in zip(received + waiting, lines):
        assert (got["code"], got["frame"], got["reject"]) == (
            codes[line["label"]],
            line["frame_id"] & 0xFFFF,
            line["label"] != "OK",
        )
        assert got["reason"] == (1 if line["label"] == "ERROR" else 0)


# --- lineside plc-sim, the simulator, as the PLC --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _plc_sim(*args: str, timeout: float = 120) -> subprocess.Popen:
    """`lineside plc-sim ARGS --json` started as its own process, the way an integrator runs it."""
    command = [sys.executable, "-m", "lineside", "plc-sim", *args, "--json"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(sim: subprocess.Popen, timeout: float = 120) -> tuple[int, list[dict], dict, str]:
    out, err = sim.communicate(timeout=timeout)
    rows = [json.loads(x) for x in out.splitlines() if x.strip()]
    summary = rows.pop()["summary"] if rows and "summary" in rows[-1] else {}
    return sim.returncode, rows, summary, err


def _printed_equal_the_log(printed: list[dict], lines: list[dict]) -> None:
    """The simulator's lines are the log's verdict lines, in order, each once: seq, verdict, frame, part id."""
    assert [x["seq"] for x in printed] == [x["seq"] for x in lines]
    codes = {"OK": 0, "NG": 1, "ERROR": 2}
    for got, line in zip(printed, lines):
        assert (got["verdict"], got["part_id"]) == (line["label"], line.get("part_id", ""))
        assert got["frame_id"] in (line["frame_id"], line["frame_id"] & 0xFFFF)
        assert got["reason"] == (REASONS["frame"] if line["label"] == "ERROR" else 0) and codes[got["verdict"]] >= 0
    assert len({x["result_id"] for x in printed}) == len(printed)


def test_plc_sim_over_opcua_runs_100_parts_and_prints_the_results_log(controlled, detector, tmp_path):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port))
    try:
        code, printed, summary, err = _finished(
            _plc_sim(f"opcua://127.0.0.1:{port}/lineside", "--parts", "100", "--part-id-prefix", "SN-")
        )
    finally:
        server.shutdown()
    assert code == 0, err
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    assert [x["part_id"] for x in printed] == [f"SN-{i:04d}" for i in range(1, 101)]
    _printed_equal_the_log(printed, lines)
    counts = {v: sum(x["label"] == v for x in lines) for v in ("OK", "NG", "ERROR")}
    assert summary == summary | {"parts": 100, **counts, "refused_triggers": 0} and min(counts.values()) > 0
    assert 0 < summary["result_ms_min"] <= summary["result_ms_avg"] <= summary["result_ms_max"]


def test_plc_sim_away_with_5_results_pending_gets_them_in_order_none_twice(controlled, detector, tmp_path):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port))
    args = ("--parts", "8", "--disconnect-after", "2", "--hold", "5", "--away", "3", "--part-id-prefix", "P")
    try:
        code, printed, summary, err = _finished(_plc_sim(f"opcua://127.0.0.1:{port}/lineside", *args))
    finally:
        server.shutdown()
    assert code == 0, err
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    assert [x["part_id"] for x in printed] == [f"P{i:04d}" for i in range(1, 9)]
    assert [x["held"] for x in printed] == [False] * 2 + [True] * 5 + [False]  # collected after coming back
    _printed_equal_the_log(printed, lines)
    assert summary["parts"] == 8 and len(lines) == 8


def test_plc_sim_as_the_modbus_plc_runs_parts_equal_to_the_log(controlled, detector, tmp_path):
    port = free_port()
    sim = _plc_sim("modbus", "--listen", f"127.0.0.1:{port}", "--handshake", str(H), "--unit", "1", "--parts", "6")
    time.sleep(1.0)  # serve dials the PLC again within a second either way; this only saves that second
    server = _serve(controlled, detector, tmp_path, f"modbus://127.0.0.1:{port}?unit=1&handshake={H}&poll_ms=5")
    try:
        code, printed, summary, err = _finished(sim, timeout=60)
    finally:
        server.shutdown()
        if sim.poll() is None:
            sim.kill()
    assert code == 0, err
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    assert [x["part_id"] for x in printed] == [f"SIM-{i:04d}" for i in range(1, 7)]
    _printed_equal_the_log(printed, lines)
    assert summary["parts"] == 6


def test_plc_sim_without_a_serve_is_exit_2_in_one_line():
    code, printed, _, err = _finished(_plc_sim(f"opcua://127.0.0.1:{free_port()}/lineside", "--parts", "1"))
    assert code == 2 and not printed
    assert err.strip().count("\n") == 0 and "cannot connect to serve at opc.tcp://127.0.0.1:" in err


class Forgetful(Handshake):
    """A serve that breaks rule 4: its first acknowledged result comes back under a new ResultId."""

    def ack(self, result_id: int) -> bool:
        head = self.pending[0] if self.pending else None
        if not super().ack(result_id):
            return False
        if self.delivered == 1:
            with self.lock:
                self.pending.append(dataclasses.replace(head, id=self.next_id))
                self.next_id += 1
                self._changed()
        return True


def test_plc_sim_seeing_a_result_presented_again_after_its_ack_is_exit_1():
    from runtime.serve.metrics import Metrics
    from runtime.serve.sinks import parse_sink

    port, triggers = free_port(), []
    sink = parse_sink(f"opcua-server://127.0.0.1:{port}/lineside?handshake=1", Metrics(), 16)
    machine = sink.handshakes["0"] = Forgetful(8, lambda part_id: triggers.append(part_id) or f"plc-{len(triggers)}")
    sink.start()

    def inspector():  # each trigger's result, as serve's inspector would give it, outside the handshake's lock
        done = 0
        while sink.server is not None and done < 3:
            if len(triggers) > done:
                done += 1
                machine.result({"label": "OK", "frame_id": done, "trigger_id": f"plc-{done}", "seq": done})
            time.sleep(0.005)

    thread = threading.Thread(target=inspector, daemon=True)
    thread.start()
    try:
        code, printed, _, err = _finished(_plc_sim(f"opcua://127.0.0.1:{port}/lineside", "--parts", "3"), 60)
    finally:
        sink.shutdown()
    assert code == 1 and [x["seq"] for x in printed] == [1]
    assert "protocol violation: the result of seq 1 presented again after its acknowledgement, as ResultId 2" in err
