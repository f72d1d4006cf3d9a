"""The webhook sink against a real aiohttp server: one kept-alive connection, re-sends after a 5xx or a
broken connection with bounded backoff, never after a 4xx, and a stop that does not wait out the backoff."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from aiohttp import web

from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.sinks import WebhookSink, parse_sink
from runtime.settings import ServeSettings


class Peer:
    """An aiohttp server in its own thread; answers each POST with the next status of `answers` (then 204)."""

    def __init__(self, answers: list[int] | None = None):
        self.answers = list(answers or [])
        self.posts: list[tuple[float, tuple, dict]] = []  # (time, client address, body)
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10), "peer did not start"

    async def _hook(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername")  # (host, port): the client end of the connection
        self.posts.append((time.monotonic(), peer, json.loads(await request.read())))
        return web.Response(status=self.answers.pop(0) if self.answers else 204)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()


def _failures(metrics: Metrics, sink) -> float | None:
    return metrics.registry.get_sample_value("lineside_sink_failures_total", {"sink": sink.label})


def _send(sink, n: int, done) -> None:
    """Offer n records and close once `done()` (serve stopping makes a failure final: no re-send then)."""
    sink.start()
    for i in range(n):
        sink.offer({"frame_id": i})
    deadline = time.monotonic() + 20
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    sink.close(10)


def test_records_go_over_one_kept_alive_connection(peer):
    metrics = Metrics()
    sink = parse_sink(peer.url, metrics, 64, serve=ServeSettings())
    _send(sink, 20, lambda: len(peer.posts) >= 20)
    assert [body["frame_id"] for _, _, body in peer.posts] == list(range(20))
    assert len({conn for _, conn, _ in peer.posts}) == 1  # one TCP connection for all twenty
    assert _failures(metrics, sink) is None


def test_a_5xx_is_sent_again_with_growing_bounded_waits_until_taken(peer):
    peer.answers = [503, 502, 500]  # the first record is refused three times, then taken
    metrics = Metrics()
    sink = WebhookSink(peer.url, metrics, 16, retries=3, backoff_s=0.2)
    _send(sink, 2, lambda: len(peer.posts) >= 5)
    assert [body["frame_id"] for _, _, body in peer.posts] == [0, 0, 0, 0, 1]
    times = [t for t, _, _ in peer.posts]
    waits = [b - a for a, b in zip(times, times[1:4])]
    assert all(w <= 0.2 * 2**k + 0.4 for k, w in enumerate(waits)), waits  # full jitter below each bound (+ slack)
    assert _failures(metrics, sink) is None and sink.attempts == 5


def test_a_4xx_is_never_sent_again(peer):
    peer.answers = [400, 422]
    metrics = Metrics()
    sink = WebhookSink(peer.url, metrics, 16, retries=3, backoff_s=0.05)
    _send(sink, 3, lambda: len(peer.posts) >= 3)
    assert [body["frame_id"] for _, _, body in peer.posts] == [0, 1, 2]
    assert _failures(metrics, sink) == 2 and sink.attempts == 3


def test_retries_are_bounded_and_then_counted_as_failures():
    with socket.socket() as s:  # a port where nobody listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    metrics = Metrics()
    sink = WebhookSink(dead, metrics, 16, retries=2, backoff_s=0.05)
    started = time.monotonic()
    _send(sink, 3, lambda: _failures(metrics, sink) == 3)
    assert _failures(metrics, sink) == 3 and sink.attempts == 9  # each record: once and twice again
    assert time.monotonic() - started < 5


def test_stopping_does_not_wait_out_the_backoff(peer):
    peer.answers = [503] * 100
    metrics = Metrics()
    sink = WebhookSink(peer.url, metrics, 16, retries=5, backoff_s=20.0)
    sink.start()
    for i in range(4):
        sink.offer({"frame_id": i})
    deadline = time.monotonic() + 10
    while not peer.posts and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    sink.close(10)
    assert time.monotonic() - started < 3 and not sink.is_alive()
    assert _failures(metrics, sink) == 4  # the one being retried and the three queued: failed, counted
