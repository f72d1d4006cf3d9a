"""The PLC handshake (issue 27, items 1, 2 and 6): the state machine alone, then a real serve on loopback with
`lineside plc-sim` as its PLC, run as its command: 100 parts over OPC UA (an asyncua client) equal to the
results log, a PLC away with 5 results pending that gets them in order and none twice, the Modbus PLC (a
pymodbus server) across a restart that cleared its memory; the simulator's client a step at a time into a
full queue that refuses the trigger; and the simulator's exit codes for a serve that breaks a rule or is
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

from lineside.plcsim import UaPeer
from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.frames.sources import FrameSource
from runtime.serve.results.plc.handshake import REASONS, Handshake, Refused, reason_code
from tests.brokers import free_port
from tests.controlled import CATEGORY, part
from tests.serving import DEFECT, result_lines

asyncua = pytest.importorskip("asyncua")  # the plant extra is part of dev; test_plc.py fails loudly without it


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


def _until(plc: UaPeer, condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition(seen := plc.read()):
        assert time.monotonic() < deadline, f"{what}; the PLC reads {seen}"
        time.sleep(0.003)
    return seen


def _trigger(plc: UaPeer, part_id: str) -> bool:
    """Raise Trigger with a part id, held until lineside counts it: True when taken, False when refused."""
    before = plc.read()
    plc.trigger(True, part_id)
    counts = lambda s: (s.accepted, s.refused)  # noqa: E731
    seen = _until(plc, lambda s: counts(s) != counts(before), "trigger neither taken nor refused")
    plc.trigger(False)
    return seen.accepted != before.accepted


def test_a_full_queue_refuses_the_trigger_and_says_why(controlled, detector, tmp_path):
    """The simulator's own client driven a step at a time: a trigger into a full queue, which plc-sim never sends."""
    port = free_port()
    server = _serve(controlled, detector, tmp_path, _opcua(port), plc_results=2)
    plc = UaPeer(f"opcua://127.0.0.1:{port}/lineside")
    plc.connect()
    try:
        for i in range(2):
            _until(plc, lambda s: s.trigger_ready, "never ready")
            assert _trigger(plc, f"P{i}")
        seen = _until(plc, lambda s: s.pending == 2, "two results not pending")
        assert seen.state == "Full" and not seen.trigger_ready and "plc_results=2" in seen.why
        assert not _trigger(plc, "P2")  # refused: counted, not inspected
        assert plc.read().refused == 1
        first = _until(plc, lambda s: s.result_ready, "no result presented")
        plc.ack(first.result_id)
        seen = _until(plc, lambda s: s.trigger_ready, "a free place never made ready")
        assert seen.state == "Ready" and seen.pending == 1 and first.part_id == "P0"
    finally:
        plc.close()
        server.shutdown()
    assert [x.get("part_id") for x in result_lines(server)] == ["P0", "P1"]  # P2 never inspected


H = 200  # the Modbus handshake block's first register


# --- lineside plc-sim, the simulator, as the PLC --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _plc_sim(*args: str, json_lines: bool = True) -> subprocess.Popen:
    """`lineside plc-sim ARGS --json` started as its own process, the way an integrator runs it."""
    command = [sys.executable, "-m", "lineside", "plc-sim", *args, *(["--json"] if json_lines else [])]
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


def test_plc_sim_as_the_modbus_plc_runs_parts_equal_to_the_log_across_a_plc_restart(controlled, detector, tmp_path):
    """The simulator is the pymodbus server; 3 results wait while it restarts with its memory cleared."""
    port = free_port()
    args = ("--listen", f"127.0.0.1:{port}", "--handshake", str(H), "--unit", "1", "--parts", "10")
    away = ("--disconnect-after", "6", "--hold", "3", "--away", "2", "--ack-delay", "0.02")
    sim = _plc_sim("modbus", *args, *away, "--part-id-prefix", "M")
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
    assert [x["part_id"] for x in printed] == [f"M{i:04d}" for i in range(1, 11)]
    assert [x["held"] for x in printed] == [False] * 6 + [True] * 3 + [False]
    assert [x.get("part_id") for x in lines] == [f"M{i:04d}" for i in range(1, 11)]  # the ids the PLC wrote
    _printed_equal_the_log(printed, lines)
    assert summary["parts"] == 10


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


class ZeroId(Handshake):
    """A serve that breaks rule 3: its second result is presented with ResultId 0."""

    def view(self):
        view = super().view()
        if view.result is not None and view.result.seq == 2:
            return dataclasses.replace(view, result=dataclasses.replace(view.result, id=0))
        return view


class Fieldless(Handshake):
    """A serve that breaks rule 3: its second result is ResultReady without its fields (no verdict)."""

    def view(self):
        view = super().view()
        if view.result is not None and view.result.seq == 2:
            return dataclasses.replace(view, result=dataclasses.replace(view.result, verdict=""))
        return view


@pytest.mark.parametrize(
    "broken, why",
    [
        (Forgetful, "the result of seq 1 presented again after its acknowledgement, as ResultId 2"),
        (ZeroId, "ResultReady with ResultId 0"),
        (Fieldless, "ResultReady without its result fields"),
    ],
)
def test_plc_sim_seeing_serve_break_a_rule_is_exit_1_saying_which(broken, why):
    """serve's own OPC UA sink, its handshake swapped for one that breaks a rule, and no camera: plc-sim's
    checks are the thing tested, so the broken peer is the real server with a wrong state machine in it."""
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.results.sinks import parse_sink

    port, triggers = free_port(), []
    sink = parse_sink(f"opcua-server://127.0.0.1:{port}/lineside?handshake=1", Metrics(), 16)
    machine = sink.handshakes["0"] = broken(8, lambda part_id: triggers.append(part_id) or f"plc-{len(triggers)}")
    sink.start()

    def inspector():  # each trigger's result, as serve's inspector would give it, outside the handshake's lock
        done = 0
        while sink.server is not None and done < 3:
            if len(triggers) > done:
                done += 1
                record = {"label": "OK", "frame_id": done, "trigger_id": f"plc-{done}", "seq": done}
                machine.result(record | {"part_id": triggers[done - 1]})
            time.sleep(0.005)

    thread = threading.Thread(target=inspector, daemon=True)
    thread.start()
    try:
        sim = _plc_sim(f"opcua://127.0.0.1:{port}/lineside", "--parts", "3", json_lines=False)
        out, err = sim.communicate(timeout=60)
    finally:
        sink.shutdown()
    printed = out.splitlines()  # the text lines: the one part done, then the summary
    assert sim.returncode == 1 and len(printed) == 2 and printed[0].startswith("SIM-0001  id 1  OK  reason 0  seq 1  ")
    assert printed[1].startswith("1 parts: 1 OK, 0 NG, 0 ERROR; 0 triggers refused; trigger to result min/avg/max ")
    assert err.strip().count("\n") == 0 and f"plc-sim: protocol violation: {why}" in err, err


def test_plc_sim_against_a_serve_without_the_handshake_or_one_that_stops_is_exit_2(controlled, detector, tmp_path):
    port = free_port()
    server = _serve(controlled, detector, tmp_path, f"opcua-server://127.0.0.1:{port}/lineside")  # no handshake=1
    try:
        code, printed, _, err = _finished(_plc_sim(f"opcua://127.0.0.1:{port}/lineside", "--parts", "1"), 60)
    finally:
        server.shutdown()
    assert code == 2 and not printed and err.strip().count("\n") == 0 and "has no handshake nodes" in err
    assert "?handshake=1" in err
    port = free_port()
    server = _serve(controlled, detector, tmp_path / "stops", _opcua(port))
    sim = _plc_sim(f"opcua://127.0.0.1:{port}/lineside", "--parts", "1000", "--interval", "0.01")
    try:
        first = [json.loads(sim.stdout.readline()) for _ in range(3)]  # three parts done, then serve goes
    finally:
        server.shutdown()
    code, printed, summary, err = _finished(sim, 60)
    assert [x["part_id"] for x in first] == ["SIM-0001", "SIM-0002", "SIM-0003"] and code == 2
    assert err.strip().count("\n") == 0 and f"lost serve at opc.tcp://127.0.0.1:{port}/lineside" in err, err
    assert summary["parts"] == 3 + len(printed)  # what was done before is still summed up
