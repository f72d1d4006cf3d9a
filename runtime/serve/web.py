"""HTTP for people and machines: health, readiness, metrics, results, a live stream, a page.

aiohttp: one well-kept package with an asyncio server, streaming responses
(MJPEG) and no separate ASGI server to deploy. It runs in its own thread; every
handler only reads the shared State, so a slow client never touches inspection.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from aiohttp import web

PAGE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")
BOUNDARY = "lineside-frame"


def create_app(server) -> web.Application:
    """`server` offers .state, .metrics, .ready() -> (bool, problem) and .counters()."""
    state, metrics = server.state, server.metrics

    async def healthz(_):
        return web.Response(text="ok\n")

    async def readyz(_):
        ok, problem = server.ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else f"not ready: {problem}\n")

    async def metrics_text(_):
        return web.Response(body=metrics.text(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type": "version=0.0.4"})  # fmt: skip

    async def latest(_):
        if state.latest is None:
            return web.json_response({"error": "no frame inspected yet"}, status=404)
        return web.json_response(state.latest)

    async def results(request):
        raw = request.query.get("since", "0")
        if not raw.isdigit():
            return web.json_response({"error": f"since must be a frame id (a whole number >= 0), got {raw!r}"},
                                     status=400)  # fmt: skip
        return web.json_response(state.since(int(raw)))

    async def status(_):
        ok, problem = server.ready()
        return web.json_response({"ready": ok, "problem": problem, "counters": server.counters(),
                                  "fps": state.fps, "last_ng": state.last_ng, "latest": state.latest})  # fmt: skip

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                               "Cache-Control": "no-store"})  # fmt: skip
        await response.prepare(request)
        loop, seen = asyncio.get_running_loop(), -1
        try:
            while not server.stop.is_set():
                seen, jpeg = await loop.run_in_executor(None, state.next_jpeg, seen, 1.0)
                if jpeg is None:
                    continue
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                await response.write(head + jpeg + b"\r\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def page(_):
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/", page), web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/metrics", metrics_text), web.get("/api/status", status),
                    web.get("/api/result/latest", latest), web.get("/api/results", results),
                    web.get("/stream", stream)])  # fmt: skip
    return app


class WebThread(threading.Thread):
    """Runs the app on host:port in its own event loop; `port` holds the bound port once started."""

    def __init__(self, app: web.Application, host: str, port: int):
        super().__init__(name="http", daemon=True)
        self.app, self.host, self.port = app, host, port
        self.started = threading.Event()
        self.error: Exception | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.app, handle_signals=False)
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except OSError as e:
            self.error = e
            self.started.set()
            return
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def close(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(5)
