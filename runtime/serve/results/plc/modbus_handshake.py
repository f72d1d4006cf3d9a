"""The handshake (handshake.py) over Modbus TCP: lineside polls the PLC's registers and writes its own block there.

    --sink "modbus://192.168.0.10:502?unit=1&handshake=200&camera=0&poll_ms=20"

lineside stays the Modbus client, as for the verdict registers (modbus.py); the PLC
is the server and holds both blocks, 0-based holding-register addresses from
`handshake` (H). docs/plc.md has the tables and the timing.

    written by lineside (one write, function 16, of H+0..H+14)
      H+0   status bits: 1 TriggerReady, 2 Busy, 4 ResultReady, 8 Full (results wait), 16 Blocked
      H+1   TriggersAccepted, H+2 TriggersRefused (each low 16 bits)
      H+3   ResultId (1..65535; 0: none presented)
      H+4   verdict code 0 OK, 1 NG, 2 ERROR;  H+5 reject 0/1;  H+6 score x 1000 (65535: none)
      H+7   reason code (0 none, 1 frame, 2 inference, 3 time-out, 9 other)
      H+8   frame id low 16 bits;  H+9, H+10 the line's seq in the results log, low then high 16 bits
      H+11  results pending;  H+12 heartbeat, +1 a second
      H+13  RecipeActive: the recipe in force;  H+14 why the RecipeIndex written was refused (RECIPE_REFUSALS)
    written by the PLC (read with function 3, H+16..H+26)
      H+16  Trigger (non-zero: high);  H+17 ResultAck (the ResultId read)
      H+18..H+25  part id: up to 16 ASCII characters, two a register, high byte first, NUL-padded
      H+26  RecipeIndex: the recipe the PLC selects (0: the camera's own settings)

The recipe registers came last, in the gap after lineside's block and after the part id, so that no
register a PLC program already uses moved.

Every poll the PLC's block is read and, when anything changed (or a second passed,
or the PLC came back), lineside's block is written whole. A PLC that drops is dialled
again at most once a second; the results it has not acknowledged wait in the
handshake, and the first write after it returns presents the oldest of them again.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlparse

from ..sinks import Sink
from .handshake import RESULTS, Handshake, Refused
from .plc import Redial, integer, options, plain_url, port_of, require

log = logging.getLogger("lineside.serve")

KNOWN = {
    "unit": "unit (slave) id 0..247, default 1",
    "handshake": "first register of the handshake block (H+0..H+26)",
    "camera": "the camera whose handshake this is; default 0 (an unnamed camera)",
    "poll_ms": "how often the PLC's registers are read, 5..1000 ms; default 20",
}
OUT, IN = 15, 11  # registers written, registers read
PLC_OFFSET = 16  # the PLC's block starts at H+16
PART_CHARS = 16
NO_SCORE = 65535
# Why a RecipeIndex was refused, as a number a PLC program can branch on (the words are in serve's log).
RECIPE_REFUSALS = {"not configured": 1, "fail screening": 2, "holds no image": 2, "has no recipes": 3}


def recipe_refusal(why: str) -> int:
    """H+14 for the handshake's recipe_refused text: 0 none, 1 not configured, 2 its references failed at
    start, 3 this camera has no recipes, 9 other."""
    if not why:
        return 0
    return next((code for words, code in RECIPE_REFUSALS.items() if words in why), 9)


def status(view) -> int:
    bits = (view.trigger_ready, view.busy, view.result_ready, view.state == "Full", view.state == "Blocked")
    return sum(1 << i for i, on in enumerate(bits) if on)


def block(view, beat: int) -> list[int]:
    """lineside's registers H+0..H+14 for a handshake View."""
    r = view.result
    score = NO_SCORE if r is None or r.score is None else min(max(round(r.score * 1000), 0), NO_SCORE - 1)
    seq = r.seq if r else 0
    return [
        status(view),
        view.accepted & 0xFFFF,
        view.refused & 0xFFFF,
        r.id if r else 0,
        r.code if r else 0,
        int(r.reject) if r else 0,
        score,
        r.reason_code if r else 0,
        (r.frame_id if r else 0) & 0xFFFF,
        seq & 0xFFFF,
        (seq >> 16) & 0xFFFF,
        min(view.pending, 0xFFFF),
        beat & 0xFFFF,
        view.recipe_active & 0xFFFF,
        recipe_refusal(view.recipe_refused),
    ]


def part_id(registers: list[int]) -> str:
    """The PLC's part id from its registers: two ASCII characters each, high byte first, NUL-ended."""
    raw = b"".join(int(r & 0xFFFF).to_bytes(2, "big") for r in registers)
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return text if text.isprintable() else ""


def part_registers(text: str) -> list[int]:
    """The registers a PLC writes for part id `text` (the simulator's and the tests' side)."""
    raw = text.encode("ascii")[:PART_CHARS].ljust(PART_CHARS, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, PART_CHARS, 2)]


class ModbusHandshakeSink(Sink):
    """One camera's handshake with a Modbus PLC: verdict lines feed it, a poll thread talks to the PLC."""

    def __init__(self, spec: str, metrics, maxsize: int, timeout_s: float = 2.0):
        url = urlparse(spec)
        opts = options(spec, url.query, KNOWN)
        usage = "modbus://HOST:PORT?unit=1&handshake=REGISTER"
        if not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"--sink {spec!r}: use {usage}")
        plain_url(spec, url, f"{usage}: Modbus TCP has no accounts")
        self.unit = integer(spec, "unit", opts.get("unit", "1"), 0, 247)
        self.base = integer(spec, "handshake", opts.get("handshake", "0"), 0, 65536 - PLC_OFFSET - IN)
        self.poll_s = integer(spec, "poll_ms", opts.get("poll_ms", "20"), 5, 1000) / 1000
        self.camera = opts.get("camera", "0") or "0"
        client = require("pymodbus.client", spec)
        port = port_of(spec, url, 502)
        super().__init__(f"modbus://{url.hostname}:{port}?unit={self.unit}&handshake={self.base}", metrics, maxsize)
        self.client = client.ModbusTcpClient(url.hostname, port=port, timeout=timeout_s, retries=0)
        self.redial = Redial()
        self.handshake = Handshake()
        self.acked, self.written, self.wrote_at, self.beat = 0, None, 0.0, 0
        self.poller = threading.Thread(target=self._poll, name=f"modbus-handshake-{self.base}", daemon=True)

    def attach(self, camera: str, submit, bound: int = RESULTS, timeout_s: float = 30.0, select=None) -> None:
        if camera == self.camera:
            self.handshake = Handshake(bound, submit, timeout_s, select=select)

    def start(self) -> None:
        super().start()
        self.poller.start()

    def deliver(self, record: dict, frame) -> None:
        if str(record.get("camera") or "0") == self.camera:
            self.handshake.result(record)

    def _poll(self) -> None:
        while not self.closing.is_set():
            started = time.monotonic()
            try:
                self._step()
            except Exception as e:  # the PLC went away mid-step: dialled again, the results wait
                self.client.close()
                self.written = None
                self.redial.failed()
                self.problem = f"PLC {self.label}: {type(e).__name__}: {e}"
            self.closing.wait(max(0.0, self.poll_s - (time.monotonic() - started)))

    def _step(self) -> None:
        if not self.client.connected:
            if not self.redial.due():
                return
            if not self.client.connect():
                self.redial.failed()
                raise ConnectionError(f"cannot connect to PLC {self.label}")
            self.redial.succeeded()
            log.info("sink %s: connected", self.label)
        read = self.client.read_holding_registers(self.base + PLC_OFFSET, count=IN, device_id=self.unit)
        if read.isError():
            raise RuntimeError(f"PLC {self.label} refused the read: {read} (check unit and handshake)")
        trigger, ack, *part, recipe = read.registers
        self.handshake.recipe_index(recipe)  # first: an index and a trigger written together mean that part in it
        try:
            self.handshake.trigger_level(trigger != 0, part_id(part))
        except Refused as e:
            log.warning("camera %s: PLC trigger refused: %s", self.camera, e)
        if ack != self.acked:
            self.acked = ack
            self.handshake.ack(ack)
        self.handshake.tick()
        self._write()

    def _write(self) -> None:
        now = time.monotonic()
        if now - self.wrote_at >= 1.0:
            self.beat += 1
        values = block(self.handshake.view(), self.beat)
        if values == self.written:
            return
        answer = self.client.write_registers(self.base, values, device_id=self.unit)
        if answer.isError():
            raise RuntimeError(f"PLC {self.label} refused the write: {answer} (check unit and handshake)")
        self.written, self.wrote_at, self.problem = values, now, ""

    def shutdown(self) -> None:
        self.closing.set()
        if self.poller.is_alive():
            self.poller.join(5)
        self.client.close()
