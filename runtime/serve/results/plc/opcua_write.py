"""Each verdict written into a PLC's own OPC UA server (the PLC serves, lineside is the client).

    --sink "opcua-write://192.168.0.10:4840?verdict=ns=3;s=Reject.Verdict&ng=ns=3;s=Reject.NG"

Each option names one node of the PLC (at least one; an `&` inside a node id
is written %26), and what is written follows the node's own data type, read
once at connect:

    verdict  String: OK, NG or ERROR; an integer type: 0 OK, 1 NG, 2 ERROR
    ng       Boolean: True for NG; an integer type: 1 for NG, else 0
    score    Double or Float: the image score (-1 when none); an integer type: score x 1000
    frame    an integer type: the frame id (wrapped to the type's range); String: the same as text
    part     String: the part's id, "" when the line has none

The nodes are written in one Write request, so the PLC never sees half a part.
User and password go in the URL (opcua-write://USER:PASS@HOST:PORT); the session
is unencrypted (security mode None). A PLC that drops is dialled again at most
once a second; verdicts meanwhile are counted failures, never replayed late: a
stale verdict must not move a reject gate.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from ..sinks import Sink
from .plc import VERDICTS, LoopThread, Redial, options, plain_url, port_of, require, score_of, verdict

log = logging.getLogger("lineside.serve")

KNOWN = {
    "verdict": "node for OK/NG/ERROR",
    "ng": "node for the NG bit",
    "score": "node for the image score",
    "frame": "node for the frame id",
    "part": "node for the part id",
}
INTEGERS = {  # OPC UA integer type -> (bits, signed)
    "SByte": (8, True),
    "Byte": (8, False),
    "Int16": (16, True),
    "UInt16": (16, False),
    "Int32": (32, True),
    "UInt32": (32, False),
    "Int64": (64, True),
    "UInt64": (64, False),
}
ACCEPTS = {  # option -> the node types it can be written to
    "verdict": {"String", *INTEGERS},
    "ng": {"Boolean", *INTEGERS},
    "score": {"Double", "Float", *INTEGERS},
    "frame": {"String", *INTEGERS},
    "part": {"String"},
}


def value_for(key: str, kind: str, label: str, record: dict):
    """What option `key` writes, for a node of type `kind`, about this verdict line."""
    if key == "verdict":
        return label if kind == "String" else VERDICTS[label]
    if key == "ng":
        return label == "NG" if kind == "Boolean" else int(label == "NG")
    if key == "score":
        score = score_of(record)
        if kind in INTEGERS:
            return -1 if score is None else round(score * 1000)
        return -1.0 if score is None else score
    if key == "frame":
        frame = int(record.get("frame_id", 0))
        if kind == "String":
            return str(frame)
        bits, signed = INTEGERS[kind]
        return frame % 2 ** (bits - 1 if signed else bits)
    return str(record.get("part_id") or "")


def _node_id(ua, text: str):
    """asyncua's NodeId, within what the protocol can carry: asyncua itself takes ns=99999999999, i=-5, an
    empty string id and b=!!! (decoded to nothing), each of which only fails at the PLC, part after part."""
    node = ua.NodeId.from_string(text)
    ident = node.Identifier
    if not 0 <= node.NamespaceIndex <= 0xFFFF:
        raise ValueError("namespace index beyond 0..65535")
    if isinstance(ident, int) and not 0 <= ident <= 0xFFFFFFFF:
        raise ValueError("numeric id beyond 0..4294967295")
    if isinstance(ident, (str, bytes)) and not ident:
        raise ValueError("empty id")
    return node


class OpcUaWriteSink(Sink):
    def __init__(self, spec: str, metrics, maxsize: int, timeout_s: float = 4.0):
        url = urlparse(spec)
        opts = options(spec, url.query, KNOWN)
        if not url.hostname or not opts:
            raise ValueError(
                f"--sink {spec!r}: use opcua-write://HOST:PORT?verdict=NODEID (and/or ng=, score=, frame=, part=)"
            )
        self.asyncua = require("asyncua", spec)
        self.targets = {}
        plain_url(spec, url, "opcua-write://[USER:PASS@]HOST:PORT?verdict=NODEID", userinfo=True)
        for key, text in opts.items():
            try:
                self.targets[key] = _node_id(self.asyncua.ua, text)
            except Exception as e:
                raise ValueError(f"--sink {spec!r}: {key}={text!r} is not a node id such as ns=3;s=Reject.NG") from e
        port = port_of(spec, url, 4840)
        netloc = url.netloc if url.port else f"{url.netloc}:{port}"  # USER:PASS@ stays: asyncua reads it from there
        self.url = f"opc.tcp://{netloc}{url.path}"
        super().__init__(f"opcua-write://{url.hostname}:{port}{url.path}", metrics, maxsize)
        self.timeout_s, self.redial = timeout_s, Redial()
        self.loop = LoopThread(f"opcua-write-{url.hostname}")
        self.client, self.nodes, self.kinds = None, [], []

    def start(self) -> None:
        self.loop.start()
        super().start()

    def deliver(self, record: dict, frame) -> None:
        label = verdict(record)
        if label is None:
            return
        if self.client is None:
            if not self.redial.due():
                raise ConnectionError(f"PLC {self.label} is away; dialled again within {self.redial.every_s:g} s")
            try:
                self.loop.run_sync(self._connect(), 2 * self.timeout_s)
            except Exception:
                self.redial.failed()
                raise
            self.redial.succeeded()
        values = [value_for(key, kind, label, record) for key, kind in zip(self.targets, self.kinds)]
        try:
            self.loop.run_sync(self._write(values), self.timeout_s)
        except Exception:
            self.loop.run_sync(self._disconnect(), self.timeout_s)
            raise

    async def _connect(self) -> None:
        client = self.asyncua.Client(self.url, timeout=self.timeout_s)
        client.session_timeout = 600_000  # ms; asyncua asks for an hour, which servers cut (and it warns)
        await client.connect()
        try:
            nodes, kinds = [], []
            for key, nodeid in self.targets.items():
                node = client.get_node(nodeid)
                kind = (await node.read_data_type_as_variant_type()).name
                if kind not in ACCEPTS[key]:
                    raise ValueError(
                        f"{key} node {nodeid.to_string()} is {kind}; it takes {', '.join(sorted(ACCEPTS[key]))}"
                    )
                nodes.append(node)
                kinds.append(kind)
        except BaseException:
            await client.disconnect()
            raise
        self.client, self.nodes, self.kinds = client, nodes, kinds
        log.info("sink %s: connected, writing %s", self.label, ", ".join(self.targets))

    async def _write(self, values: list) -> None:
        kinds = self.asyncua.ua.VariantType
        variants = [self.asyncua.ua.Variant(v, getattr(kinds, k)) for v, k in zip(values, self.kinds)]
        await self.client.write_values(self.nodes, variants)

    async def _disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception as e:  # a PLC that is gone cannot be said goodbye to
                log.debug("sink %s: disconnect: %s", self.label, e)

    def shutdown(self) -> None:
        try:
            self.loop.run_sync(self._disconnect(), self.timeout_s + 1)
        finally:
            self.loop.stop()
