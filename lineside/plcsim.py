"""lineside plc-sim: the PLC's side of the handshake (docs/plc.md), against a running serve.

A commissioning engineer wants to hold the conversation before the PLC program exists, and the tests
want one real client that runs it as a PLC program would. For each part the simulator waits for
TriggerReady, writes the part id, raises Trigger, holds it until TriggersAccepted or TriggersRefused
moves, lowers it, waits for ResultReady with a new ResultId, reads the result fields and writes
ResultAck. It checks what serve promises on the way (a ResultId other than 0, the fields there with
ResultReady, no result presented again once acknowledged, results in the log's order) and stops at the
first broken promise (exit 1); a serve it cannot reach or use is exit 2, all parts done is exit 0.

    lineside plc-sim opcua://127.0.0.1:4840/lineside --parts 100
    lineside plc-sim modbus --listen 0.0.0.0:5020 --handshake 200 --unit 1 --parts 20

The two transports are the two serve speaks: over OPC UA serve hosts the nodes and the simulator is an
asyncua client; over Modbus TCP serve is the client that polls the PLC, so the simulator is the
pymodbus server holding both register blocks, and its program reads and writes them through a
loopback client as a PLC program reads its own memory. `--disconnect-after N` triggers `--hold` parts
without acknowledging them, goes away for `--away` seconds (OPC UA: the client disconnects; Modbus: the
server stops and comes back with its memory cleared, a PLC restart), and then collects them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

OPCUA_USAGE = "opcua://HOST:PORT/PATH (serve's --sink opcua-server://HOST:PORT/PATH?handshake=1)"
MODBUS_PART_CHARS = 16  # the part id registers H+18..H+25 (modbus_handshake.PART_CHARS)
VERDICT_CODES = {"OK": 0, "NG": 1, "ERROR": 2}


class Violation(Exception):
    """serve broke a rule of the handshake (exit 1)."""


class Unreachable(Exception):
    """serve cannot be reached, or cannot be used as asked (exit 2)."""


@dataclass(frozen=True)
class Signals:
    """What the PLC reads of lineside at one moment, the same for both transports."""

    trigger_ready: bool
    result_ready: bool
    result_id: int
    verdict: str | None  # None where the transport gives only the code (Modbus)
    code: int
    reject: bool
    reason: int
    frame_id: int
    part_id: str | None  # None where the transport carries no part id with the result (Modbus)
    seq: int
    pending: int
    accepted: int
    refused: int
    state: str
    why: str
    recipe_active: int = 0  # the recipe in force (RecipeActive)


# --- the two transports ---------------------------------------------------------------------------------


class UaPeer:
    """serve's OPC UA handshake nodes, through a real asyncua client on a loop of its own."""

    FIELDS = ("TriggerReady", "ResultReady", "ResultId", "ResultVerdict", "ResultCode", "ResultReject")
    FIELDS += ("ResultReason", "ResultFrameId", "ResultPartId", "ResultSeq", "Pending", "TriggersAccepted")
    FIELDS += ("TriggersRefused", "State", "StateWhy", "RecipeActive")
    part_chars = None  # a String node: any length

    def __init__(self, url: str, camera: str = "0", namespace: str = "urn:lineside", timeout: float = 5.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("opcua", "opc.tcp") or not parsed.hostname:
            raise Unreachable(f"plc-sim {url!r}: use {OPCUA_USAGE}")
        try:
            port = parsed.port or 4840
        except ValueError:
            raise Unreachable(f"plc-sim {url!r}: the port is not a number; use {OPCUA_USAGE}") from None
        self.endpoint = f"opc.tcp://{parsed.hostname}:{port}{parsed.path}"
        self.camera, self.namespace, self.timeout = camera, namespace, timeout
        import asyncua

        from runtime.serve.results.plc.plc import LoopThread

        self.asyncua, self.ua = asyncua, asyncua.ua
        self.loop = LoopThread("plc-sim-opcua")
        self.loop.start()
        self.client = None

    def _run(self, coroutine, what: str):
        """The coroutine's answer; a connection that failed or went away is Unreachable, said once."""
        try:
            return self.loop.run_sync(coroutine, self.timeout + 5)
        except (OSError, TimeoutError, self.ua.UaError, concurrent.futures.CancelledError) as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise Unreachable(f"plc-sim: {what} {self.endpoint}: {why}") from None

    def connect(self) -> None:
        self.client = self.asyncua.Client(self.endpoint, timeout=self.timeout)
        self._run(self.client.connect(), "cannot connect to serve at")
        try:
            ns = self._run(self.client.get_namespace_index(self.namespace), "cannot read the namespaces of")
        except ValueError:
            raise Unreachable(f"plc-sim: {self.endpoint} has no namespace {self.namespace!r}") from None
        self.nodes = {n: self.client.get_node(f"ns={ns};s=Lineside.{self.camera}.{n}") for n in self.FIELDS}
        for name in ("Trigger", "TriggerPartId", "ResultAck", "RecipeIndex"):
            self.nodes[name] = self.client.get_node(f"ns={ns};s=Lineside.{self.camera}.{name}")
        names = (*self.FIELDS, "Trigger", "TriggerPartId", "ResultAck", "RecipeIndex")
        read = self._run(self.client.read_attributes([self.nodes[n] for n in names]), "cannot read the nodes of")
        missing = [n for n, r in zip(names, read) if not r.StatusCode.is_good()]
        if missing:
            raise Unreachable(
                f"plc-sim: {self.endpoint} has no handshake nodes for camera {self.camera!r} ({missing[0]}:"
                f" {read[names.index(missing[0])].StatusCode.name}); start serve with"
                " --sink opcua-server://...?handshake=1 and --trigger software"
            )

    def disconnect(self) -> None:
        if self.client is not None:
            try:
                self.loop.run_sync(self.client.disconnect(), self.timeout)
            except Exception:  # already gone (serve stopped): nothing left to close
                pass
            self.client = None

    def close(self) -> None:
        self.disconnect()
        self.loop.stop()

    def read(self) -> Signals:
        got = dict(
            zip(self.FIELDS, self._run(self.client.read_values([self.nodes[n] for n in self.FIELDS]), "lost serve at"))
        )
        return Signals(
            bool(got["TriggerReady"]),
            bool(got["ResultReady"]),
            int(got["ResultId"] or 0),
            str(got["ResultVerdict"] or ""),
            int(got["ResultCode"] or 0),
            bool(got["ResultReject"]),
            int(got["ResultReason"] or 0),
            int(got["ResultFrameId"] or 0),
            str(got["ResultPartId"] or ""),
            int(got["ResultSeq"] or 0),
            int(got["Pending"] or 0),
            int(got["TriggersAccepted"] or 0),
            int(got["TriggersRefused"] or 0),
            str(got["State"] or ""),
            str(got["StateWhy"] or ""),
            int(got["RecipeActive"] or 0),
        )

    def _write(self, name: str, value, kind: str) -> None:
        variant = self.ua.DataValue(self.ua.Variant(value, getattr(self.ua.VariantType, kind)))
        self._run(self.nodes[name].write_value(variant), "lost serve at")

    def trigger(self, level: bool, part_id: str = "") -> None:
        if level:
            self._write("TriggerPartId", part_id, "String")
        self._write("Trigger", level, "Boolean")

    def ack(self, result_id: int) -> None:
        self._write("ResultAck", result_id, "UInt32")

    def recipe(self, index: int) -> None:
        self._write("RecipeIndex", index, "UInt16")


class ModbusPeer:
    """The PLC's memory: a real pymodbus server holding both blocks (serve polls it), read and written
    by the simulator's program through a loopback client."""

    part_chars = MODBUS_PART_CHARS

    def __init__(self, listen: str, handshake: int, unit: int, timeout: float = 2.0):
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise Unreachable(f"plc-sim modbus --listen {listen!r}: use HOST:PORT, e.g. 0.0.0.0:5020")
        if not 0 <= handshake <= 65536 - 27:
            raise Unreachable(f"plc-sim modbus --handshake {handshake}: the block H+0..H+26 must fit 0..65535")
        if not 0 <= unit <= 247:
            raise Unreachable(f"plc-sim modbus --unit {unit}: a unit id is 0..247")
        import pymodbus.client

        from runtime.serve.results.plc.plc import LoopThread

        self.host, self.port, self.base, self.unit, self.timeout = host, int(port), handshake, unit, timeout
        self.loop = LoopThread("plc-sim-modbus")
        self.loop.start()
        self.server = None
        own = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host.strip("[]"))
        self.memory = pymodbus.client.ModbusTcpClient(own, port=self.port, timeout=timeout, retries=1)

    async def _serve(self):
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        size = self.base + 27  # H+26: RecipeIndex
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        registers = [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(id=self.unit, simdata=(bits, list(bits), registers, list(registers)))
        server = ModbusTcpServer(device, address=(self.host.strip("[]"), self.port))
        await server.serve_forever(background=True)
        return server

    def connect(self) -> None:
        """The PLC starts: its memory all zeros, serve's block written by serve once it has dialled in."""
        try:
            self.server = self.loop.run_sync(self._serve(), 10)
        except (OSError, TimeoutError) as e:
            raise Unreachable(f"plc-sim modbus: cannot listen on {self.host}:{self.port}: {e}") from None
        if not self.memory.connect():
            raise Unreachable(f"plc-sim modbus: cannot reach its own server at {self.host}:{self.port}")

    def disconnect(self) -> None:
        """The PLC stops; its memory goes with it."""
        self.memory.close()
        if self.server is not None:
            self.loop.run_sync(self.server.shutdown(), 10)
            self.server = None

    def close(self) -> None:
        self.disconnect()
        self.loop.stop()

    def _ask(self, request, *args, what: str, **kw):
        """One request to its own memory; a server gone (the loop stopped, the port lost) is Unreachable."""
        from pymodbus.exceptions import ModbusException

        try:
            answer = request(*args, device_id=self.unit, **kw)
        except (ModbusException, OSError) as e:
            raise Unreachable(
                f"plc-sim modbus: its own server at {self.host}:{self.port} failed the {what}: {e}"
            ) from None
        return self._check(answer, what)

    def _check(self, answer, what: str):
        if answer.isError():
            raise Unreachable(f"plc-sim modbus: its own server refused the {what}: {answer}")
        return answer

    def read(self) -> Signals:
        r = self._ask(self.memory.read_holding_registers, self.base, count=15, what="read").registers
        bits = r[0]
        why = (
            f"recipe refused: reason {r[14]} (1 not configured, 2 references failed at start, 3 no recipes)"
            if r[14]
            else ""
            if any(r)
            else "serve has not written its block yet (is its --sink modbus://THIS-HOST:PORT?unit=U&handshake=H?)"
        )
        state = "Blocked" if bits & 16 else "Full" if bits & 8 else "Executing" if bits & 2 else "Ready"
        return Signals(
            bool(bits & 1),
            bool(bits & 4),
            r[3],
            None,
            r[4],
            bool(r[5]),
            r[7],
            r[8],
            None,
            r[9] | r[10] << 16,
            r[11],
            r[1],
            r[2],
            state,
            why,
            r[13],
        )

    def trigger(self, level: bool, part_id: str = "") -> None:
        from runtime.serve.results.plc.modbus_handshake import part_registers

        if level:
            self._check(
                self.memory.write_registers(self.base + 18, part_registers(part_id), device_id=self.unit), "write"
            )
        self._check(self.memory.write_register(self.base + 16, int(level), device_id=self.unit), "write")

    def ack(self, result_id: int) -> None:
        self._ask(self.memory.write_register, self.base + 17, result_id, what="write")

    def recipe(self, index: int) -> None:
        self._ask(self.memory.write_register, self.base + 26, index, what="write")


# --- the PLC program ------------------------------------------------------------------------------------


@dataclass
class Part:
    """One part's conversation, as printed."""

    part_id: str  # the result's own part id where the transport carries it, else the one triggered
    result_id: int
    verdict: str
    reason: int
    seq: int
    frame_id: int
    accept_ms: float  # Trigger raised to a counter moved
    result_ms: float | None  # Trigger raised to ResultReady seen; None for a part collected after being away
    ack_ms: float  # ResultAck written to the result taken down
    held: bool = False  # triggered before going away, collected after


@dataclass
class Summary:
    parts: int = 0
    verdicts: dict = field(default_factory=lambda: {"OK": 0, "NG": 0, "ERROR": 0})
    refused: int = 0
    result_ms: list = field(default_factory=list)

    def as_dict(self) -> dict:
        times = self.result_ms
        return {
            "parts": self.parts,
            **self.verdicts,
            "refused_triggers": self.refused,
            "result_ms_min": round(min(times), 1) if times else None,
            "result_ms_avg": round(sum(times) / len(times), 1) if times else None,
            "result_ms_max": round(max(times), 1) if times else None,
        }

    def line(self) -> str:
        d = self.as_dict()
        times = "n/a" if not self.result_ms else f"{d['result_ms_min']}/{d['result_ms_avg']}/{d['result_ms_max']} ms"
        return (
            f"{d['parts']} parts: {d['OK']} OK, {d['NG']} NG, {d['ERROR']} ERROR; {d['refused_triggers']} triggers"
            f" refused; trigger to result min/avg/max {times}"
        )


class Simulator:
    """The PLC program: parts one after another over a peer (UaPeer, ModbusPeer); `emit` gets each Part."""

    def __init__(
        self,
        peer,
        parts: int,
        prefix: str = "SIM-",
        interval: float = 0.0,
        ack_delay: float = 0.0,
        disconnect_after: int | None = None,
        away: float = 10.0,
        hold: int = 3,
        timeout: float = 35.0,
        emit=lambda part: None,
        poll_s: float = 0.003,
    ):
        self.peer, self.parts, self.prefix, self.interval, self.ack_delay = peer, parts, prefix, interval, ack_delay
        self.disconnect_after, self.away, self.hold, self.timeout = disconnect_after, away, hold, timeout
        self.emit, self.poll_s = emit, poll_s
        self.summary = Summary()
        self.acked = 0  # the ResultId last acknowledged
        self.seqs: set[int] = set()  # seq of every result acknowledged
        self.last_seq = 0

    def run(self) -> Summary:
        self.peer.connect()
        try:
            done = 0
            while done < self.parts:
                if done == self.disconnect_after:
                    done += self._away(min(self.hold, self.parts - done), done)
                    continue
                part = self._name(done)
                started, accept_ms = self._trigger(part)
                self._collect(part, started, accept_ms)
                done += 1
                if self.interval and done < self.parts:
                    time.sleep(self.interval)
        finally:
            self.peer.disconnect()
        return self.summary

    def _name(self, index: int) -> str:
        return f"{self.prefix}{index + 1:04d}"

    def _until(self, condition, what: str, holding: int = 0) -> Signals:
        """The first Signals that meet `condition`; a serve that cannot be used as asked is Unreachable, one
        that does not answer within --timeout broke a rule (serve promises an ERROR by plc_timeout_s)."""
        deadline = time.monotonic() + self.timeout
        while True:
            seen = self.peer.read()
            if condition(seen):
                return seen
            if seen.state == "Blocked":
                raise Unreachable(
                    "plc-sim: serve takes no PLC trigger on this camera (start it with --trigger software)"
                )
            if holding and seen.state == "Full":
                raise Unreachable(
                    f"plc-sim: --hold {holding}: serve holds only {seen.pending} results unacknowledged"
                    " (its plc_results setting); lower --hold"
                )
            if time.monotonic() > deadline:
                if seen.why.startswith("serve has not written"):
                    raise Unreachable(f"plc-sim modbus: after {self.timeout:g} s {seen.why}")
                raise Violation(f"{what} within {self.timeout:g} s (lineside shows {_brief(seen)})")
            time.sleep(self.poll_s)

    def _trigger(self, part: str, holding: int = 0) -> tuple[float, float]:
        """Raise Trigger for `part` until it is taken; refusals are counted and the trigger raised again."""
        while True:
            before = self._until(lambda s: s.trigger_ready, "TriggerReady never came", holding)
            self.peer.trigger(True, part)
            started = time.monotonic()
            counts = (before.accepted, before.refused)
            seen = self._until(
                lambda s, counts=counts: (s.accepted, s.refused) != counts,
                "neither TriggersAccepted nor TriggersRefused moved",
            )
            accept_ms = (time.monotonic() - started) * 1000
            self.peer.trigger(False)
            if seen.accepted != before.accepted:
                return started, accept_ms
            self.summary.refused += 1

    def _collect(self, part: str, started: float | None, accept_ms: float, held: bool = False) -> Part:
        def fresh(s: Signals) -> bool:  # a new ResultId, or one of 0 (a broken rule, said by _check)
            return s.result_ready and (s.result_id != self.acked or s.result_id == 0)

        seen = self._until(fresh, "no new result presented")
        result_ms = None if started is None else (time.monotonic() - started) * 1000
        self._check(seen)
        if self.ack_delay:
            time.sleep(self.ack_delay)
        self.peer.ack(seen.result_id)
        acked_at = time.monotonic()
        self._until(
            lambda s: not s.result_ready or s.result_id != seen.result_id,
            f"ResultId {seen.result_id} still presented after its acknowledgement",
        )
        self.acked = seen.result_id
        self.seqs.add(seen.seq)
        self.last_seq = max(self.last_seq, seen.seq)
        verdict = seen.verdict or next(v for v, c in VERDICT_CODES.items() if c == seen.code)
        done = Part(
            part if seen.part_id is None else seen.part_id,
            seen.result_id,
            verdict,
            seen.reason,
            seen.seq,
            seen.frame_id,
            round(accept_ms, 1),
            None if result_ms is None else round(result_ms, 1),
            round((time.monotonic() - acked_at) * 1000, 1),
            held,
        )
        self.summary.parts += 1
        self.summary.verdicts[verdict] += 1
        if result_ms is not None:
            self.summary.result_ms.append(result_ms)
        self.emit(done)
        return done

    def _check(self, seen: Signals) -> None:
        """What serve promises of a presented result (docs/plc.md, rules 3 to 6)."""
        if seen.result_id == 0:
            raise Violation(f"ResultReady with ResultId 0 (lineside shows {_brief(seen)})")
        transported = seen.verdict is not None  # Modbus gives only the code
        if seen.code not in VERDICT_CODES.values() or transported and VERDICT_CODES.get(seen.verdict) != seen.code:
            raise Violation(f"ResultReady without its result fields (lineside shows {_brief(seen)})")
        if seen.reject != (seen.code != 0):
            raise Violation(f"ResultReject does not follow the verdict (lineside shows {_brief(seen)})")
        if seen.seq and seen.seq in self.seqs:
            raise Violation(
                f"the result of seq {seen.seq} presented again after its acknowledgement, as ResultId {seen.result_id}"
            )
        if seen.seq and seen.seq < self.last_seq:
            raise Violation(f"results out of order: seq {seen.seq} presented after seq {self.last_seq}")

    def _away(self, count: int, done: int) -> int:
        """`count` parts triggered and left unacknowledged, the PLC away, then the parts collected in order."""
        held = []
        for i in range(count):
            part = self._name(done + i)
            held.append((part, *self._trigger(part, holding=count)))
        self._until(lambda s: s.pending >= count, f"the {count} held results never all waited")
        self.peer.disconnect()
        time.sleep(self.away)
        self.peer.connect()
        for part, _, accept_ms in held:
            self._collect(part, None, accept_ms, held=True)
        return count


def _brief(seen: Signals) -> str:
    keep = ("trigger_ready", "result_ready", "result_id", "verdict", "code", "seq", "pending", "state", "why")
    return ", ".join(f"{k}={getattr(seen, k)!r}" for k in keep if getattr(seen, k) not in ("", None))


# --- the command ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lineside plc-sim",
        description="Run the PLC's side of the handshake against a running serve (docs/plc.md).",
    )
    p.add_argument("peer", help=f"{OPCUA_USAGE}, or the word modbus (then plc-sim is the PLC's Modbus server)")
    p.add_argument("--parts", type=int, default=100, help="parts to trigger (default 100)")
    p.add_argument("--part-id-prefix", default="SIM-", help="part ids are PREFIX0001, PREFIX0002, ... (default SIM-)")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between one part's ack and the next trigger")
    p.add_argument("--ack-delay", type=float, default=0.0, help="seconds between reading a result and acknowledging it")
    p.add_argument("--disconnect-after", type=int, help="after N parts, trigger --hold more, go away, collect them")
    p.add_argument("--away", type=float, default=10.0, help="seconds away with results pending (default 10)")
    p.add_argument(
        "--hold", type=int, default=3, help="parts left unacknowledged while away (default 3; fewer than plc_results)"
    )
    p.add_argument(
        "--timeout", type=float, default=35.0, help="seconds to wait for any step (default 35: past plc_timeout_s)"
    )
    p.add_argument("--camera", default="0", help="OPC UA: the camera whose nodes to use (default 0)")
    p.add_argument("--namespace", default="urn:lineside", help="OPC UA: serve's namespace URI (default urn:lineside)")
    p.add_argument("--listen", default="0.0.0.0:5020", help="Modbus: HOST:PORT the PLC's server listens on")
    p.add_argument(
        "--handshake", type=int, default=200, help="Modbus: the block's first register H (serve's handshake=H)"
    )
    p.add_argument("--unit", type=int, default=1, help="Modbus: the unit id (serve's unit=U)")
    p.add_argument("--json", action="store_true", help='JSON lines: one per part, then {"summary": ...}')
    return p


def _text(part: Part) -> str:
    result = "after away" if part.result_ms is None else f"{part.result_ms:g} ms"
    return (
        f"{part.part_id or '-'}  id {part.result_id}  {part.verdict}  reason {part.reason}  seq {part.seq}"
        f"  accept {part.accept_ms:g} ms  result {result}  ack {part.ack_ms:g} ms"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for noisy in ("asyncua", "pymodbus"):  # their own lines about a closed connection: ours says it once
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    say = (lambda p: print(json.dumps(asdict(p)), flush=True)) if args.json else (lambda p: print(_text(p), flush=True))
    try:
        if args.parts < 1 or args.hold < 1 or args.away < 0 or args.timeout <= 0:
            raise Unreachable("plc-sim: --parts and --hold must be >= 1, --away >= 0 and --timeout > 0")
        if args.peer == "modbus":
            peer = ModbusPeer(args.listen, args.handshake, args.unit)
        else:
            peer = UaPeer(args.peer, args.camera, args.namespace)
        longest = len(args.part_id_prefix) + max(4, len(str(args.parts)))
        if peer.part_chars and longest > peer.part_chars:
            peer.close()
            raise Unreachable(
                f"plc-sim: part ids of {longest} characters do not fit {peer.part_chars}; shorten --part-id-prefix"
            )
    except Unreachable as e:
        print(e, file=sys.stderr)
        return 2
    except ImportError as e:  # asyncua, pymodbus: the plant extra
        print(f"plc-sim: {e} (install the plant extra: pip install -c constraints.txt -e '.[plant]')", file=sys.stderr)
        return 2
    sim = Simulator(
        peer,
        args.parts,
        args.part_id_prefix,
        args.interval,
        args.ack_delay,
        args.disconnect_after,
        args.away,
        args.hold,
        args.timeout,
        say,
    )
    code = 0
    try:
        sim.run()
    except Violation as e:
        print(f"plc-sim: protocol violation: {e}", file=sys.stderr)
        code = 1
    except Unreachable as e:
        print(e, file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 2
    finally:
        peer.close()
    summary = sim.summary
    if code == 2 and not summary.parts:
        return code  # nothing done: the one line above says why
    print(json.dumps({"summary": summary.as_dict()}) if args.json else summary.line(), flush=True)
    return code
