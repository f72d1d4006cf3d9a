"""HTTP for people and machines: health, readiness, metrics, results, a live stream, a page.

aiohttp: one well-kept package with an asyncio server, streaming responses
(MJPEG) and no separate ASGI server to deploy. It runs in its own thread; every
handler only reads the shared State, so a slow client never touches inspection.
Hostile clients are bounded: at most `max_connections` are open at once (more
get a 503 and are closed at once, so they cannot take the process's file
descriptors), and a connection that has not sent a complete request within
`read_timeout` seconds is closed (aiohttp's keep-alive timer, which also runs
from the moment a connection opens).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import threading
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.aiohttp import make_aiohttp_handler

from ..frames.triggers import MAX_BODY, TriggerRefused, trigger_fields
from ..judging.gallery import Layers
from ..results.records import strict_json
from .feedback import authorised
from .operator import OperatorPage, unauthorised

log = logging.getLogger("lineside.serve")


class MalformedInOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (a method it does not know, a broken header line) at ERROR with
    its parser's traceback: garbage a client sent, answered 400, not a fault of serve's. It becomes one warning
    line that names it, so anyone on the network cannot fill serve's log with tracebacks; any other error keeps
    its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            why = " ".join(str(error.message).split())[:160]
            record.msg, record.args = "HTTP: a malformed request refused (%s): %s", (error.code, why)
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


HTTP_LOG = logging.getLogger("lineside.serve.http")  # aiohttp's request handler logs here (WebThread.run)
HTTP_LOG.addFilter(MalformedInOneLine())

HERE = Path(__file__).parent
PAGE = (HERE / "page.html").read_text(encoding="utf-8")
STATIC = {  # the page's own files: no framework, nothing fetched from elsewhere (the box is offline)
    "page.css": ((HERE / "page.css").read_text(encoding="utf-8"), "text/css"),
    "page.js": ((HERE / "page.js").read_text(encoding="utf-8"), "application/javascript"),
}
BOUNDARY = "lineside-frame"
FRAME_ID = re.compile(r"[0-9]{1,18}")  # below 2**63, and never int() of 5,000 digits
REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 21\r\n\r\ntoo many connections\n"


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=strict_json)


def graph_lines(graphs: dict[str, dict]) -> str:
    """One line per graph: "graph clip_image int8 on CPUExecutionProvider (requested cuda, cpu)"."""
    return "".join(
        f"graph {name} {g['precision']} on {', '.join(g['providers']) or '-'} "
        f"(requested {', '.join(g.get('requested') or ['-'])}){_server_state(g.get('server'))}\n"
        for name, g in graphs.items()
    )


def _server_state(server: dict | None) -> str:
    """ ", server answering" or ", server failing: WHY (next try in N s)" for a graph on a Triton server."""
    if not server:
        return ""
    if server["state"] == "answering":
        return ", server answering"
    return f", server failing: {server['error']} (next try in {server['retry_in_s']:g} s)"


def loopback(host: str) -> bool:
    """True for an address only this box can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[] ")).is_loopback
    except ValueError:
        return False


def newest(states, published: str = "published", held: str = "latest") -> dict | None:
    """The newest of several cameras' records (`held`, told apart by the time each was `published`)."""
    times = [(getattr(st, published), getattr(st, held)) for st in states if getattr(st, held) is not None]
    return max(times, key=lambda pair: pair[0])[1] if times else None


def shared_point(states) -> dict | None:
    """The operating point in force, when every camera has the same one (else each tile says its own)."""
    points = [st.operating_point for st in states]
    return points[0] if points and all(p == points[0] for p in points) else None


def create_app(server) -> web.Application:
    """`server` offers .cameras (id -> camera: .state, .triggers, .ready(), .counters()), .metrics, .stop,
    .health(), .ready() -> (bool, problem), .graphs() and .counters().

    /api/status, /api/result/latest and /api/results take ?camera=ID for one camera; without it they answer
    for every camera: the newest result of any, every camera's results (each line names its camera), the
    counters and rates of all together."""
    metrics = server.metrics
    operator = OperatorPage(server)  # the page's tiles, pictures and feedback (operator.py)

    def chosen(request) -> list[tuple[str, object]]:
        """(id, camera) of ?camera=ID (404 for an unknown one), or of every camera without it."""
        if "camera" not in request.query:
            return list(operator.cameras.items())
        return [operator.camera(request)]

    async def healthz(_):
        ok, problem = server.health()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else f"unhealthy: {problem}\n")

    async def readyz(_):
        ok, problem = server.ready()
        text = ("ready\n" if ok else f"not ready: {problem}\n") + graph_lines(server.graphs())
        return web.Response(status=200 if ok else 503, text=text)

    metrics_text = make_aiohttp_handler(metrics.registry)  # prometheus_client's own: content negotiation, gzip

    async def latest(request):
        record = newest(cam.state for _, cam in chosen(request))
        if record is None:
            return _json({"error": "no frame inspected yet"}, status=404)
        return _json(record)

    async def results(request):
        """Results after frame `since` (each camera counts its own frames), in the order they were taken."""
        raw = request.query.get("since", "0")
        if not FRAME_ID.fullmatch(raw):
            shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
            return _json(
                {"error": f"since must be a frame id (a whole number, 0 to 18 digits), got {shown!r}"}, status=400
            )
        cameras = chosen(request)
        rows = [r for _, cam in cameras for r in cam.state.since(int(raw))]
        return _json(sorted(rows, key=lambda r: r.get("time") or 0.0) if len(cameras) > 1 else rows)

    async def status(request):
        cameras = chosen(request)
        states = [cam.state for _, cam in cameras]
        if len(cameras) == len(operator.cameras):
            (ok, problem), counters = server.ready(), server.counters()
        else:
            (ok, problem), counters = cameras[0][1].ready(), cameras[0][1].counters()
        return _json(
            {
                "ready": ok,
                "problem": problem,
                "graphs": server.graphs(),
                "counters": counters,
                "fps": sum(st.fps for st in states),
                "operating_point": shared_point(states),
                "last_ng": newest(states, "ng_published", "last_ng"),
                "latest": newest(states),
                **operator.box(),
                "cameras": [operator.tile(key, cam) for key, cam in cameras],
            }
        )

    async def stream(request):
        """MJPEG of the overlay at the frame's size; ?camera=ID, and ?heatmap=0, ?outlines=0, ?banner=0 drop layers."""
        _, camera = operator.camera(request)
        layers = Layers.of(request.query)
        response = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        loop, seen = asyncio.get_running_loop(), -1
        try:
            while not server.stop.is_set():
                seen, jpeg = await loop.run_in_executor(None, camera.state.next_jpeg, seen, 1.0, layers)
                if jpeg is None:
                    continue
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                await response.write(head + jpeg + b"\r\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def trigger(request):
        """POST /api/trigger[?id=ID][&camera=ID] (or a body: ID, {"id": ID, "part_id": P}): one inspection;
        202, 429 when the queue is full, 401 without the token when api_token is set."""
        key, camera = operator.camera(request)
        queue, token = camera.triggers, operator.tokens[key]
        if token and not authorised(token, request.headers):
            return unauthorised("a trigger starts an inspection", token)
        if queue is None:
            return _json({"error": "serve runs free-run (every frame is inspected); set trigger=software"}, 409)
        if server.stop.is_set():
            return _json({"error": "serve is stopping"}, 503)
        body = await request.content.read(MAX_BODY + 1)
        try:
            given, part = trigger_fields(body, request.query.get("id"), request.query.get("part_id"))
        except ValueError as e:
            queue.refused()
            return _json({"error": str(e)}, 413 if len(body) > MAX_BODY else 400)
        try:
            accepted = queue.offer(given, "http", part)
        except TriggerRefused as e:
            return _json({"error": str(e)}, 429)
        return _json({"id": accepted.id, "time": accepted.time, "waiting": queue.waiting()}, 202)

    async def page(_):
        return web.Response(text=PAGE, content_type="text/html")

    async def static(request):
        found = STATIC.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404, text="no such file\n")
        return web.Response(text=found[0], content_type=found[1])

    app = web.Application()
    app.add_routes(
        [
            web.get("/", page),
            web.get("/static/{name}", static),
            *operator.routes(),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_text),
            web.get("/api/status", status),
            web.get("/api/result/latest", latest),
            web.get("/api/results", results),
            web.get("/stream", stream),
            web.post("/api/trigger", trigger),
        ]
    )
    return app


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, passed through, that gives its slot back when it closes."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard):
        self.inner, self.guard = inner, guard

    def connection_made(self, transport):
        self.inner.connection_made(transport)

    def data_received(self, data):
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()

    def connection_lost(self, exc):
        self.guard.open -= 1
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """Over the cap: answer 503 and close at once, before reading anything."""

    def connection_made(self, transport):
        transport.write(REFUSED)
        transport.close()


class ConnectionGuard:
    """Protocol factory for loop.create_server: aiohttp's handler while fewer than `cap` are open."""

    def __init__(self, make_handler, cap: int, counter=None):
        self.make_handler, self.cap, self.counter, self.open, self.refused = make_handler, cap, counter, 0, 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.cap:
            self.refused += 1
            if self.counter is not None:
                self.counter.inc()
            log.warning("HTTP: %d connections open, the cap (http_max_connections): refusing new ones", self.cap)
            return _Refused()
        self.open += 1
        return _Counted(self.make_handler(), self)


class WebThread(threading.Thread):
    """Runs the app on host:port in its own event loop; `port` holds the bound port once started."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        max_connections: int = 64,
        read_timeout: float = 10.0,
        refused_counter=None,
    ):
        super().__init__(name="http", daemon=True)
        self.refused_counter = refused_counter
        self.app, self.host, self.port = app, host, port
        self.max_connections, self.read_timeout = max_connections, read_timeout
        self.started = threading.Event()
        self.error: Exception | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.guard: ConnectionGuard | None = None

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.app, handle_signals=False, keepalive_timeout=self.read_timeout, logger=HTTP_LOG)
        try:
            self.loop.run_until_complete(runner.setup())
            self.guard = ConnectionGuard(runner.server, self.max_connections, self.refused_counter)
            listener = self.loop.run_until_complete(
                self.loop.create_server(self.guard, self.host, self.port, backlog=128, reuse_address=True)
            )
            self.port = listener.sockets[0].getsockname()[1]
        except OSError as e:  # cleaned up and closed before start() hears of it: nothing left running
            self.error = e
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()
            self.started.set()
            return
        self.started.set()
        self.loop.run_forever()
        listener.close()
        self.loop.run_until_complete(runner.cleanup())

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.ident is not None:
            self.join(5)
