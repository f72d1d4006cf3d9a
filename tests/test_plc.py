"""PLC outputs against real peers on loopback: an asyncua client reading serve's OPC UA server, a PLC's own
asyncua server that serve writes into, a pymodbus server holding the coil and registers; PLCs that drop
and come back; bad specs refused; serve end to end."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server
from runtime.serve.__main__ import main as serve_main
from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.plc.plc import LoopThread
from runtime.serve.results.sinks import parse_sink
from tests.brokers import free_port
from tests.controlled import CATEGORY, part
from tests.serving import result_lines, serve_settings, wait_for

ROOT = Path(__file__).resolve().parents[1]

try:  # the plant extra, part of dev: its absence is a failure, never a silent skip
    import asyncua
    import pymodbus.client as pymodbus_client
    from asyncua import ua
    from pymodbus.simulator import DataType, SimData, SimDevice
except ImportError as e:
    pytest.fail(f"{e}: the PLC tests need the plant extra (pip install -c constraints.txt -e '.[dev]')", pytrace=False)


def _line(label: str, frame_id: int, score: float | None = 0.1, **more) -> dict:
    return {"label": label, "frame_id": frame_id, "image_score": score, **more}


def _failures(metrics: Metrics, sink) -> float:
    return metrics.registry.get_sample_value("lineside_sink_failures_total", {"sink": sink.label}) or 0.0


@pytest.fixture
def loop():
    """The test's own asyncio loop in a thread, for the PLC side (clients and servers)."""
    thread = LoopThread("test-plc")
    thread.start()
    yield thread
    thread.stop()


class UaReader:
    """An OPC UA client as a PLC would be: reads lineside's variables by node id."""

    def __init__(self, loop: LoopThread, endpoint: str):
        self.loop, self.client = loop, asyncua.Client(endpoint, timeout=5)
        loop.run_sync(self.client.connect(), 10)
        self.ns = loop.run_sync(self.client.get_namespace_index("urn:lineside"), 5)

    def __call__(self, camera: str, name: str):
        node = self.client.get_node(f"ns={self.ns};s=Lineside.{camera}.{name}")
        return self.loop.run_sync(node.read_value(), 5)

    def soon(self, camera: str, name: str):
        """The value, or None while the node does not exist yet."""
        try:
            return self(camera, name)
        except ua.uaerrors.BadNodeIdUnknown:
            return None

    def close(self) -> None:
        self.loop.run_sync(self.client.disconnect(), 5)


def test_opcua_server_shows_each_cameras_last_verdict_to_a_real_client(loop):
    port = free_port()
    metrics = Metrics()
    sink = parse_sink(f"opcua-server://127.0.0.1:{port}/lineside?pulse_ms=1500", metrics, 16)
    sink.start()
    read = UaReader(loop, f"opc.tcp://127.0.0.1:{port}/lineside")
    try:
        assert read("0", "Verdict") == "" and read("0", "NgCount") == 0  # camera 0's nodes are there from the start
        sink.offer(_line("OK", 1, 0.125, part_id="P-1"))
        wait_for(lambda: read("0", "FrameId") == 1, 10, "OK frame never shown")
        assert (read("0", "Verdict"), read("0", "Score"), read("0", "PartId")) == ("OK", 0.125, "P-1")
        assert read("0", "NgPulse") is False
        sink.offer({"label": "EXPLANATION", "frame_id": 1, "text": "a scratch"})  # not a verdict: ignored
        sink.offer(_line("NG", 2, 0.875))
        wait_for(lambda: read("0", "FrameId") == 2, 10, "NG frame never shown")
        assert read("0", "NgPulse") is True  # for 1.5 s
        assert (read("0", "Verdict"), read("0", "NgCount"), read("0", "PartId")) == ("NG", 1, "")
        sink.offer(_line("NG", 3, 0.5, camera="right"))  # a camera not named at start gets its folder then
        wait_for(lambda: read.soon("right", "FrameId") == 3, 10, "second camera never shown")
        assert (read("right", "NgCount"), read("0", "NgCount"), read("0", "FrameId")) == (1, 1, 2)
        wait_for(lambda: read("0", "NgPulse") is False, 5, "NgPulse never fell back after pulse_ms")
        beat = read("0", "Heartbeat")
        wait_for(lambda: read("0", "Heartbeat") >= beat + 2, 5, "heartbeat stopped")
        assert abs(read("right", "Heartbeat") - read("0", "Heartbeat")) <= 1  # every camera's beats
        sink.offer(_line("ERROR", 4, None))
        wait_for(lambda: read("0", "Verdict") == "ERROR", 10, "ERROR never shown")
        assert read("0", "Score") == -1.0 and read("0", "NgCount") == 1
    finally:
        read.close()
        sink.close()
    assert _failures(metrics, sink) == 0
    with socket.socket() as s:  # closed cleanly: the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_opcua_server_on_a_port_in_use_refuses_to_start():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        sink = parse_sink(f"opcua-server://127.0.0.1:{busy.getsockname()[1]}/x", Metrics(), 4)
        with pytest.raises(OSError, match="cannot serve OPC UA on opc.tcp://127.0.0.1"):
            sink.start()
    assert not sink.loop.is_alive()


async def _plc_server(port: int) -> tuple:
    """A PLC's own OPC UA server with the nodes a line programmer would give lineside, all writable."""
    server = asyncua.Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:plc")
    block = await server.nodes.objects.add_object(ua.NodeId("Reject", ns), "Reject")
    kinds = {"Verdict": ("", "String"), "Ng": (False, "Boolean"), "Score": (0.0, "Float"), "Frame": (0, "UInt16")}
    for name, (first, kind) in kinds.items():
        node = await block.add_variable(ua.NodeId(f"Reject.{name}", ns), name, first, getattr(ua.VariantType, kind))
        await node.set_writable()
    await server.start()
    return server, ns


def test_opcua_write_follows_the_plcs_node_types_and_survives_a_plc_restart(loop):
    port = free_port()
    server, ns = loop.run_sync(_plc_server(port), 30)
    node = lambda name: f"ns={ns};s=Reject.{name}"  # noqa: E731
    value = lambda name: loop.run_sync(server.get_node(node(name)).read_value(), 5)  # noqa: E731
    spec = (
        f"opcua-write://127.0.0.1:{port}/plc?verdict={node('Verdict')}&ng={node('Ng')}"
        f"&score={node('Score')}&frame={node('Frame')}"
    )
    metrics = Metrics()
    sink = parse_sink(spec, metrics, 16)
    sink.start()
    try:
        sink.offer(_line("NG", 70_001, 0.75))
        wait_for(lambda: value("Verdict") == "NG", 15, "verdict never written")
        assert (value("Ng"), value("Score"), value("Frame")) == (True, 0.75, 70_001 % 65536)
        sink.offer({"label": "TEACH", "frame_id": 2, "references": 1})
        sink.offer(_line("OK", 3, 0.25))
        wait_for(lambda: value("Verdict") == "OK", 10, "second verdict never written")
        assert value("Ng") is False and value("Frame") == 3
        wrong = parse_sink(f"opcua-write://127.0.0.1:{port}/plc?part={node('Ng')}", Metrics(), 4)
        wrong.loop.start()
        try:  # a node of a type the option cannot take is named, with the types it can
            with pytest.raises(ValueError, match=r"part node ns=\d+;s=Reject.Ng is Boolean; it takes String"):
                wrong.deliver(_line("OK", 9), None)
        finally:
            wrong.shutdown()
        loop.run_sync(server.stop(), 10)  # the PLC goes away mid-run
        sink.offer(_line("NG", 4, 0.9))
        wait_for(lambda: _failures(metrics, sink) >= 1, 15, "a write to a stopped PLC was not counted as failed")
        server, ns = loop.run_sync(_plc_server(port), 30)  # and comes back, its values reset
        frame = iter(range(5, 10_000))
        wait_for(
            lambda: sink.offer(_line("NG", next(frame), 0.9)) or value("Verdict") == "NG",
            20,
            "never wrote again after the PLC came back",
        )
        assert value("Ng") is True and value("Frame") >= 5
    finally:
        sink.close()
        loop.run_sync(server.stop(), 10)


async def _modbus_server(port: int):
    """A listening pymodbus server: unit 1, 64 coils and 200 holding registers from address 0."""
    from pymodbus.server import ModbusTcpServer

    coils = [SimData(0, count=64, values=False, datatype=DataType.BITS)]
    registers = [SimData(0, count=200, values=0, datatype=DataType.REGISTERS)]
    device = SimDevice(id=1, simdata=(coils, list(coils), registers, list(registers)))
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


class ModbusPlc:
    """A pymodbus server as the PLC, read back over Modbus by a client as the PLC program would see it."""

    def __init__(self, loop: LoopThread, port: int):
        self.loop, self.port = loop, port
        self.start()
        self.reader = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=2)

    def start(self) -> None:
        self.server = self.loop.run_sync(_modbus_server(self.port), 10)

    def stop(self) -> None:
        self.loop.run_sync(self.server.shutdown(), 10)
        self.reader.close()

    def registers(self, first: int) -> list[int]:
        return self.reader.read_holding_registers(first, count=6, device_id=1).registers

    def coil(self, address: int) -> bool:
        return self.reader.read_coils(address, count=1, device_id=1).bits[0]


def test_modbus_writes_the_ng_coil_and_registers_and_survives_a_plc_drop(loop):
    port = free_port()
    plc = ModbusPlc(loop, port)
    metrics = Metrics()
    sink = parse_sink(f"modbus://127.0.0.1:{port}?unit=1&coil=3&register=100", metrics, 16)
    sink.start()
    try:
        sink.offer(_line("OK", 1, 0.2))
        sink.offer(_line("NG", 2, 0.877))
        sink.offer({"label": "EXPLANATION", "frame_id": 2, "text": "a scratch"})
        wait_for(lambda: plc.registers(100)[5] == 2, 10, "NG never written")
        assert plc.registers(100) == [1, 877, 1, 1, 0, 2] and plc.coil(3) is True
        sink.offer(_line("ERROR", 3, None))
        wait_for(lambda: plc.registers(100)[5] == 3, 10, "ERROR never written")
        assert plc.registers(100) == [2, 65535, 1, 1, 1, 3] and plc.coil(3) is False
        plc.stop()  # the PLC drops off the network mid-run
        sink.offer(_line("NG", 4, 0.9))
        wait_for(lambda: _failures(metrics, sink) >= 1, 10, "a write to a dropped PLC was not counted as failed")
        plc.start()  # back, with its memory reset
        frame = iter(range(5, 10_000))
        wait_for(
            lambda: sink.offer(_line("OK", next(frame), 0.1)) or plc.registers(100)[5] >= 5,  # 0 on the reset PLC
            15,
            "never wrote again after the PLC came back",
        )
        ok, ng, error = plc.registers(100)[2:5]
        assert ng == 2 and error == 1 and ok >= 2  # the verdicts missed while away are still counted
        assert plc.coil(3) is False
    finally:
        sink.close()
        plc.stop()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("modbus://", "use modbus://HOST:PORT"),
        ("modbus://plc:502/path", "use modbus://HOST:PORT"),
        ("modbus://plc:5o2", "the port must be a number"),
        ("modbus://plc:502?unit=300", "unit='300' must be a whole number in 0..247"),
        ("modbus://plc:502?coil=x", "coil='x' must be a whole number"),
        ("modbus://plc:502?register=65531", "register='65531' must be a whole number in 0..65530"),
        ("modbus://plc:502?slave=1", "unknown option 'slave'; known: unit"),
        ("modbus://plc:502?unit=1&unit=2", "option 'unit' given twice"),
        ("opcua-write://plc:4840", "opcua-write://HOST:PORT?verdict=NODEID"),
        ("opcua-write://plc:4840?verdict=ns=3;x=bad", "verdict='ns=3;x=bad' is not a node id"),
        ("opcua-write://plc:4840?reject=ns=3;s=NG", "unknown option 'reject'"),
        ("opcua-server:///lineside", "use opcua-server://HOST:PORT/PATH"),
        ("opcua-server://0.0.0.0:4840/x?pulse_ms=-5", "pulse_ms='-5' must be a whole number in 0..60000"),
        ("opcua-server://0.0.0.0:4840/x?cameras=,", "cameras must not be empty"),
        ("opc.tcp://plc:4840", "opcua-server://HOST:PORT/PATH, opcua-write://"),
    ],
)
def test_bad_plc_specs_are_refused_naming_what_is_wrong(spec, message):
    with pytest.raises(ValueError) as e:
        parse_sink(spec, Metrics(), 4)
    assert message in str(e.value) and repr(spec) in str(e.value)


def test_a_plc_spec_without_the_plant_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncua", None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "pymodbus.client", None)
    for spec in ("opcua-server://0.0.0.0:4840/x", "opcua-write://plc?ng=ns=3;s=NG", "modbus://plc:502"):
        with pytest.raises(RuntimeError, match=r"pip install 'lineside\[plant\]'"):
            parse_sink(spec, Metrics(), 4)


def test_serve_refuses_a_bad_plc_spec_at_start_up(tmp_path, capsys):
    code = serve_main(
        ["--source", str(tmp_path), "--results", str(tmp_path / "r.jsonl"), "--sink", "modbus://plc?unit=x"]
    )
    assert code == 2 and "unit='x' must be a whole number" in capsys.readouterr().err


@pytest.fixture
def frames(tmp_path) -> Path:
    """Six parts, every third defective (the last one too), plus one corrupt file: 4 OK, 2 NG, 1 ERROR."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:02d}.png"), part(red_box=(96, 64, 144, 112) if i % 3 == 2 else None))
    (folder / "03b.png").write_bytes(b"\x89PNG broken")
    return folder


def test_serve_end_to_end_feeds_opcua_and_modbus(controlled, frames, tmp_path, loop):
    ua_port, mb_port = free_port(), free_port()
    plc = ModbusPlc(loop, mb_port)
    sinks = (f"opcua-server://127.0.0.1:{ua_port}/lineside?pulse_ms=0", f"modbus://127.0.0.1:{mb_port}?register=10")
    settings = serve_settings(controlled, frames, tmp_path, sink=sinks, part_id_pattern=r"(\d+)\.png")
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    server = Server(settings, detector=detector).start()
    read = UaReader(loop, f"opc.tcp://127.0.0.1:{ua_port}/lineside")
    try:
        server.wait()
        wait_for(lambda: read("0", "FrameId") == 7, 10, "OPC UA never showed the last frame")
        wait_for(lambda: plc.registers(10)[5] == 7, 10, "Modbus never got the last frame")
        # the last file (05.png) is defective: NG, held as a level with pulse_ms=0
        last = result_lines(server)[-1]
        assert last["frame_id"] == 7 and last["label"] == "NG"
        assert (read("0", "Verdict"), read("0", "NgCount"), read("0", "NgPulse")) == ("NG", 2, True)
        assert read("0", "Score") == last["image_score"] and read("0", "PartId") == last["part_id"] == "05"
        registers = plc.registers(10)
        assert registers == [1, round(last["image_score"] * 1000), 4, 2, 1, 7] and plc.coil(0) is True
    finally:
        read.close()
        server.shutdown()
        plc.stop()
    assert [_failures(server.metrics, sink) for sink in server.sinks] == [0, 0]


def _serve_limited(controlled, frames: Path, results: Path, sink: str, open_files: int) -> subprocess.Popen:
    """A real serve whose process may hold `open_files` descriptors, soft and hard, as a box with a low limit."""

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    cmd = [sys.executable, "-m", "runtime.serve", "--bundle", str(controlled), "--category", CATEGORY]
    cmd += ["--source", str(frames), "--loop", "--max-fps", "10", "--results", str(results), "--port", "0"]
    cmd += ["--no-explain", "--sink", sink]
    log = open(results.with_suffix(".log"), "wb")  # a file: a pipe nobody reads would fill and stall serve
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, preexec_fn=limit)


def _refused(s: socket.socket) -> bool:
    """Whether serve closed this connection (it never sent a byte, so any answer is the close)."""
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="descriptor counts as Linux has them")
def test_opcua_connections_past_the_cap_are_refused_and_frames_still_logged_ok(controlled, frames, tmp_path, loop):
    """The issue's case, scaled to a limit of 320 open files: 400 idle connections (no Hello, no session) took
    every descriptor, and then a good frame was logged ERROR "Too many open files"."""
    (frames / "03b.png").unlink()  # only good and NG parts here: any ERROR line is a descriptor missing
    port, results = free_port(), tmp_path / "results.jsonl"
    proc = _serve_limited(controlled, frames, results, f"opcua-server://127.0.0.1:{port}/x", 320)
    idle: list[socket.socket] = []
    try:
        wait_for(lambda: results.exists() and len(results.read_text().splitlines()) >= 3, 60, "serve never inspected")
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(1.0)
        before = len(results.read_text().splitlines())
        wait_for(lambda: len(results.read_text().splitlines()) >= before + 10, 30, "inspection stopped")
        closed = sum(_refused(s) for s in idle)
        assert closed >= 400 - 32, f"only {closed} of 400 connections past the default clients=32 were refused"
        for s in idle:
            s.close()
        idle.clear()
        time.sleep(0.5)  # serve sees them go; a PLC connects as before
        read = UaReader(loop, f"opc.tcp://127.0.0.1:{port}/x")
        wait_for(lambda: read.soon("0", "Verdict") in ("OK", "NG"), 10, "no verdict on OPC UA")
        read.close()
    finally:
        for s in idle:
            s.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = results.with_suffix(".log").read_text(errors="replace")
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert code == 0, text[-3000:]
    assert all(x["label"] in ("OK", "NG") for x in lines), [x.get("error") for x in lines if x["label"] == "ERROR"]
    assert "Too many open files" not in text and "Traceback" not in text, text[-3000:]
    assert 1 <= text.count("OPC UA server: connection refused") <= 5  # 368 refusals, rate-limited to a line or so


def test_opcua_clients_that_would_eat_the_descriptor_reserve_refuse_the_sink(tmp_path):
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
        "from runtime.serve.interfaces.metrics import Metrics\n"
        "from runtime.serve.results.sinks import parse_sink\n"
        "sink = parse_sink(f'opcua-server://127.0.0.1:{sys.argv[1]}/x?clients=100', Metrics(), 4)\n"
        "try:\n"
        "    sink.start()\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(free_port())], cwd=ROOT, capture_output=True, text=True)
    assert "100 connections need 100 file descriptors beside the 128 kept" in proc.stdout, proc.stderr
    assert "lower clients= or raise LimitNOFILE" in proc.stdout


def test_serve_raises_its_soft_open_file_limit_to_the_hard_one():
    from runtime.serve.process.descriptors import raise_limit

    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))\n"
        "from runtime.serve.process.descriptors import raise_limit\n"
        "print(raise_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == ["2048", "2048"], proc.stderr
    assert raise_limit() >= 1024
