"""Each verdict written to a PLC over Modbus TCP: an NG coil and a block of six holding registers.

    --sink "modbus://192.168.0.10:502?unit=1&coil=0&register=100"

lineside is the Modbus client; the PLC (the server) holds, per verdict:

    register + 0   verdict code: 0 OK, 1 NG, 2 ERROR
    register + 1   image score x 1000 (0..1000; 65535 when the line has no score)
    register + 2   OK verdicts since serve started (each counter wraps at 65536)
    register + 3   NG verdicts
    register + 4   ERROR verdicts
    register + 5   frame id, low 16 bits: it changes with every verdict, the PLC's sign of a new part
    coil           True after an NG (and after an ERROR with error_rejects=1), False otherwise

The registers go in one write (function 16) before the coil (function 5), so a
PLC that acts on the coil finds the registers of the same part. Addresses are
0-based protocol addresses (register=100 is 40101 in the 4xxxx convention).
A PLC that drops is dialled again at most once a second; verdicts meanwhile are
counted failures, never replayed late (the counters still count them, so the
next write brings them up to date).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlparse

from ..sinks import Sink
from .plc import VERDICTS, Redial, integer, options, plain_url, port_of, require, score_of, verdict

log = logging.getLogger("lineside.serve")

KNOWN = {
    "unit": "unit (slave) id 0..247, default 1",
    "coil": "NG coil address, default 0",
    "register": "first of the six holding registers, default 0",
    "error_rejects": "1: an ERROR sets the NG coil too; default 0",
}
REGISTERS = 6
NO_SCORE = 65535


def registers(label: str, record: dict, counts: dict[str, int]) -> list[int]:
    """The six holding registers for a verdict line, `counts` already including it."""
    score = score_of(record)
    scaled = NO_SCORE if score is None else min(max(round(score * 1000), 0), NO_SCORE - 1)
    frame = int(record.get("frame_id", 0)) & 0xFFFF
    return [VERDICTS[label], scaled, *(counts[k] & 0xFFFF for k in VERDICTS), frame]


class ModbusSink(Sink):
    def __init__(self, spec: str, metrics, maxsize: int, timeout_s: float = 2.0):
        url = urlparse(spec)
        opts = options(spec, url.query, KNOWN)
        if not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"--sink {spec!r}: use modbus://HOST:PORT?unit=1&coil=0&register=0")
        plain_url(spec, url, "modbus://HOST:PORT?unit=1&coil=0&register=0: Modbus TCP has no accounts")
        self.unit = integer(spec, "unit", opts.get("unit", "1"), 0, 247)
        self.coil = integer(spec, "coil", opts.get("coil", "0"), 0, 65535)
        self.register = integer(spec, "register", opts.get("register", "0"), 0, 65536 - REGISTERS)
        self.error_rejects = integer(spec, "error_rejects", opts.get("error_rejects", "0"), 0, 1) == 1
        client = require("pymodbus.client", spec)
        port = port_of(spec, url, 502)
        super().__init__(f"modbus://{url.hostname}:{port}?unit={self.unit}", metrics, maxsize)
        self.client = client.ModbusTcpClient(url.hostname, port=port, timeout=timeout_s, retries=0)
        self.redial = Redial()
        self.counts = dict.fromkeys(VERDICTS, 0)

    def deliver(self, record: dict, frame) -> None:
        label = verdict(record)
        if label is None:
            return
        self.counts[label] += 1
        self._connect()
        values = registers(label, record, self.counts)
        reject = label == "NG" or (label == "ERROR" and self.error_rejects)
        try:
            answers = [
                self.client.write_registers(self.register, values, device_id=self.unit),
                self.client.write_coil(self.coil, reject, device_id=self.unit),
            ]
        except Exception:
            self.client.close()  # dialled again on the next verdict (Redial paces it)
            raise
        for answer in answers:
            if answer.isError():
                raise RuntimeError(f"PLC {self.label} refused the write: {answer} (check unit, coil and register)")

    def _connect(self) -> None:
        if self.client.connected:
            return
        if not self.redial.due():
            raise ConnectionError(f"PLC {self.label} is away; dialled again within {self.redial.every_s:g} s")
        if not self.client.connect():
            self.redial.failed()
            raise ConnectionError(f"cannot connect to PLC {self.label}")
        self.redial.succeeded()
        log.info("sink %s: connected", self.label)

    def shutdown(self) -> None:
        self.client.close()


def modbus_sink(spec: str, metrics, maxsize: int) -> Sink:
    """modbus://...: the verdict registers (ModbusSink), or with handshake=REGISTER the PLC handshake
    (modbus_handshake.py), which polls the PLC's registers as well as writing its own."""
    if "handshake" in dict(parse_qsl(urlparse(spec).query, keep_blank_values=True)):
        from .modbus_handshake import ModbusHandshakeSink

        return ModbusHandshakeSink(spec, metrics, maxsize)
    return ModbusSink(spec, metrics, maxsize)
