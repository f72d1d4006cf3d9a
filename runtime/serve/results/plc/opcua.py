"""serve as an OPC UA server that a PLC reads: per camera the last verdict and what goes with it.

    --sink "opcua-server://0.0.0.0:4840/lineside?cameras=0&pulse_ms=500&namespace=urn:lineside"

The PLC (or SCADA) is the OPC UA client; it reads or subscribes to, per camera,
`ns=<index of the namespace URI>;s=Lineside.<camera>.<Variable>` (the first
registered namespace is index 2), under Objects/Lineside/<camera>:

    Verdict   String   OK, NG or ERROR ("" before the first part)
    Score     Double   the image score, -1 when the line has none
    FrameId   Int64    the frame's id within this serve run
    PartId    String   the part's own id when the line carries one, else ""
    NgCount   UInt32   NG verdicts since serve started
    Heartbeat UInt32   +1 every second while serve runs: a PLC watchdog sees it stop
    NgPulse   Boolean  True for pulse_ms after each NG (a later NG extends it); pulse_ms=0: the
                       last verdict was NG, held until the next verdict

Beside them, Objects/Lineside/System holds the server's OPC 40100 State, its
StateReason, the verdict counts and inspection times since the last reset, and the
ResetDiagnostics method (opcua_system.py, docs/plc.md). Variables are read-only to clients.

Security (opcua_security.py): on a loopback host, or with security=none, anonymous
unsigned sessions; with users (users=FILE or $LINESIDE_OPCUA_USERS), Basic256Sha256
SignAndEncrypt with the server's own certificate from the pki folder. Any other host
without users is refused at start: anonymous clients are never taken there.

A camera's folder exists from the start when it is named in `cameras`, else from its first verdict.

At most `clients` connections (and as many sessions) are served at once; more
are closed as they come, so that idle or hostile clients can never take the
descriptors that frames and the results log need (descriptors.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from urllib.parse import urlparse

from ...process import logs
from ...process.descriptors import make_room
from ..sinks import Sink
from .handshake import RESULTS, Handshake
from .opcua_handshake import POLL_S, UaConversation
from .opcua_security import USERS_ENV, Users, certificate, loopback, policy
from .opcua_system import Diagnostics, UaSystem, system_state
from .plc import LoopThread, camera_of, integer, options, plain_url, port_of, require, score_of, verdict

log = logging.getLogger("lineside.serve")

CLIENTS = 32  # a PLC, a SCADA, a historian and engineering tools, with room to spare
MAX_CLIENTS = 1000
KNOWN = {
    "namespace": "namespace URI, default urn:lineside",
    "pulse_ms": "NgPulse length in ms, 0: a level; default 500",
    "cameras": "comma-separated camera ids whose nodes exist from the start; default 0",
    "clients": f"most client connections (and sessions) at once, 1..{MAX_CLIENTS}; default {CLIENTS}",
    "handshake": "1: the PLC handshake nodes per camera (trigger, result, acknowledgement: docs/plc.md); default 0",
    "users": f"file of NAME:PASSWORD lines, the users of the encrypted endpoint; default ${USERS_ENV}",
    "pki": "folder of the server's certificate and key, made on first start; default opcua-pki",
    "security": "none: anonymous, unsigned sessions off loopback too; default basic256sha256",
}
VARIABLES = {  # name -> (OPC UA type, value before the first verdict)
    "Verdict": ("String", ""),
    "Score": ("Double", -1.0),
    "FrameId": ("Int64", 0),
    "PartId": ("String", ""),
    "NgCount": ("UInt32", 0),
    "Heartbeat": ("UInt32", 0),
    "NgPulse": ("Boolean", False),
}
CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as camera_id and the cameras file take them
MAX_CAMERAS = 256  # nodes built at start, seven per camera
WRITE_S = 5.0  # a write into our own address space that takes longer than this is a failure


def _bindable(host: str, port: int) -> None:
    """Raise OSError (address in use, no such address) when a listener cannot bind host:port."""
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listener does
            s.bind(address)
        return


class _Refusals(logging.Filter):
    """asyncua logs each connection refused past the cap with the peer's address, so a flood of them is a
    flood of distinct lines that no rate limit catches; they become one line of ours, rate-limited."""

    def __init__(self):
        super().__init__("lineside-opcua-refusals")
        self.limit = logs.RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Refusing connection"):
            return True
        cap = record.args[-1] if isinstance(record.args, tuple) and record.args else "?"
        record.name = log.name
        record.msg = "OPC UA server: connection refused, %s clients connected already (the sink's clients=)"
        record.args = (cap,)
        return self.limit.filter(record)


def _quiet_refusals() -> None:
    library = logging.getLogger("asyncua.server.binary_server_asyncio")
    if not any(isinstance(f, _Refusals) for f in library.filters):
        library.addFilter(_Refusals())


def _cap_sessions(asyncua, clients: int) -> None:
    """Activated sessions at most. asyncua counts them for the whole process, so the cap is the sum of the
    clients of every OPC UA server of ours running here (`clients` < 0: one stopped), and asyncua's own
    again when none runs (another asyncua server in the process, a test's PLC, must not be left at 0)."""
    sessions = asyncua.server.internal_session.InternalSession
    _SESSIONS.setdefault("asyncua", sessions.max_connections)
    _SESSIONS["ours"] = max(0, _SESSIONS.get("ours", 0) + clients)
    sessions.max_connections = _SESSIONS["ours"] or _SESSIONS["asyncua"]


_SESSIONS: dict[str, int] = {}  # "ours": the clients of our OPC UA servers running; "asyncua": its own cap


class OpcUaServerSink(Sink):
    """Hosts the OPC UA server on its own asyncio loop; `deliver` updates one camera's variables there."""

    def __init__(self, spec: str, metrics, maxsize: int):
        url, usage = urlparse(spec), "opcua-server://HOST:PORT/PATH (HOST 0.0.0.0: every interface)"
        if not url.hostname:
            raise ValueError(f"--sink {spec!r}: use {usage}")
        plain_url(spec, url, usage)
        opts = options(spec, url.query, KNOWN)
        self.asyncua = require("asyncua", spec)
        self.host, self.port = url.hostname, port_of(spec, url, 4840)
        self.endpoint = f"opc.tcp://{self.host}:{self.port}{url.path}"
        self.namespace = opts.get("namespace", "urn:lineside")
        self.pulse_s = integer(spec, "pulse_ms", opts.get("pulse_ms", "500"), 0, 60_000) / 1000
        self.clients = integer(spec, "clients", opts.get("clients", str(CLIENTS)), 1, MAX_CLIENTS)
        self.cameras = [c.strip() for c in opts.get("cameras", "0").split(",") if c.strip()]
        self.handshake = integer(spec, "handshake", opts.get("handshake", "0"), 0, 1) == 1
        if not self.namespace or not self.cameras:
            raise ValueError(f"--sink {spec!r}: namespace and cameras must not be empty")
        bad = [c for c in self.cameras if not CAMERA_ID.fullmatch(c)][:3]
        if bad or len(set(self.cameras)) != len(self.cameras) or len(self.cameras) > MAX_CAMERAS:
            raise ValueError(
                f"--sink {spec!r}: cameras must be up to {MAX_CAMERAS} different camera ids (letters, digits, "
                f"'.', '-', '_'), got {len(self.cameras)}" + (f", such as {bad}" if bad else "")
            )
        self.policy = policy(spec, self.host, opts)  # last: the other options' own errors come first
        self.pair = None  # (certificate, key, application URI) once start has read or made them
        super().__init__(f"opcua-server://{self.host}:{self.port}{url.path}", metrics, maxsize)
        self.loop = LoopThread(f"opcua-server-{self.port}")
        self.server, self.beat, self.ns, self.beats = None, None, 0, 0
        self.nodes: dict[str, dict] = {}  # camera -> variable name -> Node
        self.ng_counts: dict[str, int] = {}
        self.pulses: dict[str, asyncio.Task] = {}
        self.handshakes: dict[str, Handshake] = {}  # camera -> its conversation with the PLC (handshake=1)
        self.conversations: dict[str, UaConversation] = {}
        self.converse = None
        self.system, self.diagnostics = UaSystem(self.asyncua), Diagnostics()
        self.conditions: dict[str, tuple[str, str]] = {}  # camera -> (state, why), as serve's watchdog tells them
        self.halted, self.accepted = False, 0  # accepted: the handshakes' triggers taken, at the last write

    def attach(self, camera: str, submit, bound: int = RESULTS, timeout_s: float = 30.0, select=None) -> None:
        """Before start: `camera`'s handshake, its triggers handed to serve by `submit` (None: none taken),
        its recipes selected by `select` (None: it has none)."""
        if self.handshake:
            self.handshakes[camera] = Handshake(bound, submit, timeout_s, select=select)
            if camera not in self.cameras:
                self.cameras.append(camera)

    def handshake_of(self, camera: str) -> Handshake:
        if camera not in self.handshakes:  # a camera serve did not attach: its results, no triggers
            self.handshakes[camera] = Handshake()
        return self.handshakes[camera]

    def start(self) -> None:
        """Listen before inspection starts: a port in use refuses serve at start, not later."""
        if self.policy.secure:
            try:
                self.pair = certificate(self.policy.pki)
            except ValueError as e:
                raise OSError(f"--sink {self.label}: {e}") from None
        make_room(self.clients, f"--sink {self.label}", "lower clients= or raise LimitNOFILE")
        self.loop.start()
        try:
            _bindable(self.host, self.port)  # at once, not after asyncua's seconds of building its address space
            self.loop.run_sync(self._open(), 30.0)
        except Exception as e:
            self.loop.stop()
            raise OSError(f"--sink {self.label}: cannot serve OPC UA on {self.endpoint}: {e}") from e
        offered = [f"Basic256Sha256 SignAndEncrypt for {len(self.policy.users)} users"] if self.policy.secure else []
        offered += ["anonymous, unsigned"] if self.policy.anonymous else []
        log.info(
            "OPC UA server on %s, namespace %s (index %d); sessions: %s",
            self.endpoint,
            self.namespace,
            self.ns,
            " or ".join(offered),
        )
        super().start()

    async def _open(self) -> None:
        ua = self.asyncua.ua
        p = self.policy
        server = self.asyncua.Server(user_manager=Users(self.asyncua, p.users, p.anonymous, loopback(self.host)))
        await server.init()
        server.iserver.max_connections = self.clients  # past it asyncua closes a connection as it comes
        _quiet_refusals()
        server.set_endpoint(self.endpoint)
        server.set_server_name("lineside")
        policies, tokens = [], []
        if p.secure:
            cert, key, uri = self.pair
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            await server.set_application_uri(uri)
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
            tokens.append(ua.UserNameIdentityToken)
        if p.anonymous:
            policies.append(ua.SecurityPolicyType.NoSecurity)
            tokens.append(ua.AnonymousIdentityToken)
        server.set_security_policy(policies)
        server.set_identity_tokens(tokens)
        self.ns = await server.register_namespace(self.namespace)
        self.root = await server.nodes.objects.add_folder(
            ua.NodeId("Lineside", self.ns), ua.QualifiedName("Lineside", self.ns)
        )
        await self.system.add(self.root, self.ns, self._reset)
        for camera in self.cameras:
            await self._add_camera(camera)
        await server.start()
        _cap_sessions(self.asyncua, self.clients)  # given back in _close
        self.server = server
        await self._write_system()  # Initialized before start returns, not one step later
        self.beat = asyncio.ensure_future(self._beat())
        self.converse = asyncio.ensure_future(self._converse())

    async def _add_camera(self, camera: str) -> dict:
        ua = self.asyncua.ua
        folder = await self.root.add_folder(ua.NodeId(f"Lineside.{camera}", self.ns), ua.QualifiedName(camera, self.ns))
        nodes = {}
        for name, (kind, first) in VARIABLES.items():
            nodes[name] = await folder.add_variable(
                ua.NodeId(f"Lineside.{camera}.{name}", self.ns),
                ua.QualifiedName(name, self.ns),
                first,
                getattr(ua.VariantType, kind),
            )
        await nodes["Heartbeat"].write_value(self.beats, ua.VariantType.UInt32)
        if self.handshake:
            conversation = UaConversation(self.asyncua, self.handshake_of(camera), camera)
            await conversation.add(folder, self.ns)
            self.conversations[camera] = conversation
        self.nodes[camera], self.ng_counts[camera] = nodes, 0
        return nodes

    async def _converse(self) -> None:
        """Every POLL_S the handshakes' step (what the PLC wrote read, what changed written), then the
        system nodes, so that a trigger just taken shows as Executing at once."""
        while True:
            await asyncio.sleep(POLL_S)
            for camera, conversation in list(self.conversations.items()):
                try:
                    await conversation.step()
                except Exception as e:  # one bad step must not end the conversation
                    log.warning("OPC UA handshake of camera %s: %s: %s", camera, type(e).__name__, e)
            try:
                await self._write_system()
            except Exception as e:
                log.warning("OPC UA system nodes: %s: %s", type(e).__name__, e)

    def _views(self) -> dict:
        return {camera: h.view() for camera, h in list(self.handshakes.items())} if self.handshake else {}

    async def _write_system(self) -> None:
        views = self._views()
        refused, accepted = sum(v.refused for v in views.values()), sum(v.accepted for v in views.values())
        state = system_state(self.server is not None, self.halted, dict(self.conditions), views)
        if accepted != self.accepted and state["State"] == "Ready" and self.system.written.get("State") == "Ready":
            await self.system.write({"State": "Executing"})  # a part done within one step was still executed
        self.accepted = accepted
        await self.system.write(state | self.diagnostics.values(refused))

    async def _reset(self) -> None:
        """ResetDiagnostics, on the server's loop; the nodes read zero once the call has returned."""
        self.diagnostics.reset(sum(v.refused for v in self._views().values()))
        await self._write_system()
        log.info("OPC UA server %s: diagnostics reset by a client", self.endpoint)

    def camera_condition(self, camera: str, state: str, problem: str = "") -> None:
        """The camera's condition changed (serve's watchdog: online, degraded or offline, and why); the
        system State follows it on the next step."""
        self.conditions[camera or "0"] = (state, problem)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.beats = (self.beats + 1) % 2**32
            for nodes in list(self.nodes.values()):  # a camera may be added while this one awaits
                await nodes["Heartbeat"].write_value(self.beats, self.asyncua.ua.VariantType.UInt32)

    def deliver(self, record: dict, frame) -> None:
        label = verdict(record)
        if label is not None:
            if self.handshake:  # queued first: the PLC's result waits for its acknowledgement, whatever else fails
                self.handshake_of(camera_of(record)).result(record)
            self.loop.run_sync(self._show(label, record), WRITE_S)

    async def _show(self, label: str, record: dict) -> None:
        kinds, camera = self.asyncua.ua.VariantType, camera_of(record)
        self.diagnostics.add(label, record)
        nodes = self.nodes.get(camera) or await self._add_camera(camera)
        if label == "NG":
            self.ng_counts[camera] = (self.ng_counts[camera] + 1) % 2**32
        score = score_of(record)
        await nodes["Score"].write_value(-1.0 if score is None else score, kinds.Double)
        await nodes["FrameId"].write_value(int(record.get("frame_id", 0)), kinds.Int64)
        await nodes["PartId"].write_value(str(record.get("part_id") or ""), kinds.String)
        await nodes["NgCount"].write_value(self.ng_counts[camera], kinds.UInt32)
        await nodes["Verdict"].write_value(label, kinds.String)
        if self.pulse_s == 0:
            await nodes["NgPulse"].write_value(label == "NG", kinds.Boolean)
        elif label == "NG":
            await nodes["NgPulse"].write_value(True, kinds.Boolean)
            pending = self.pulses.pop(camera, None)
            if pending is not None:
                pending.cancel()
            self.pulses[camera] = asyncio.ensure_future(self._pulse_end(nodes["NgPulse"]))

    async def _pulse_end(self, node) -> None:
        await asyncio.sleep(self.pulse_s)
        await node.write_value(False, self.asyncua.ua.VariantType.Boolean)

    def close(self, timeout: float = 15.0) -> None:
        super().close(timeout)
        if self.ident is None and self.server is not None:  # listening, but serve stopped before the thread ran
            self.shutdown()

    def shutdown(self) -> None:
        try:
            self.loop.run_sync(self._close(), 10.0)
        except Exception as e:
            log.warning("sink %s: OPC UA server did not stop cleanly: %s", self.label, e)
        self.loop.stop()

    async def _close(self) -> None:
        for task in [self.beat, self.converse, *self.pulses.values()]:
            if task is not None:
                task.cancel()
        self.halted = True
        try:
            await self._write_system()  # Halted, for a client subscribed to the state
            await asyncio.sleep(0.1)  # a publishing cycle, so that it reaches one
        except Exception as e:
            log.warning("OPC UA system nodes: %s: %s", type(e).__name__, e)
        await self.server.stop()
        self.server = None
        _cap_sessions(self.asyncua, -self.clients)
