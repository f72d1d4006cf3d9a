"""Where results go besides the durable log: JSONL files, webhooks, MQTT (mqtt.py), NG images (ngstore.py).

Each sink runs in its own thread behind a bounded queue, so a slow or dead peer
never delays inspection: when its queue is full new records are dropped and
counted, and failed deliveries are counted too. A delivery counts only when the
peer took the record: MQTT records wait in paho's bounded queue while the
broker is away, and a webhook's redirect is a failure unless following it was
asked for (then the same POST and body go to the new place).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import queue
import random
import re
import threading
import time
from pathlib import Path
from urllib.parse import ParseResult, urljoin, urlparse

import aiohttp

from ...settings import ServeSettings
from .records import end_partial_line, strict_json

log = logging.getLogger("lineside.serve")

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
MAX_BACKOFF_S = 30.0


class Sink(threading.Thread):
    """Base: a bounded queue drained by `deliver(record)` in this thread."""

    def __init__(self, name: str, metrics, maxsize: int):
        super().__init__(name=f"sink-{name}", daemon=True)
        if maxsize < 1:
            raise ValueError(f"setting sink_queue: {maxsize} must be >= 1")
        self.label, self.metrics = name, metrics
        self.tag = {"sink": name}  # its own field in --log-format json lines
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.closing = threading.Event()
        self.problem = ""  # why the last record failed, "" once one is delivered again (condition())
        self.taken = time.monotonic()  # when it last took a record or found none waiting: for /healthz

    def stuck(self, bound: float) -> str | None:
        """Why this sink has held records without taking one for longer than `bound` seconds, or None."""
        idle = time.monotonic() - self.taken
        if self.ident is None or self.queue.empty() or idle <= bound:
            return None
        return f"sink {self.label} stuck: {self.queue.qsize()} records waiting, none taken for {idle:.0f} s"

    def offer(self, record: dict, frame=None) -> None:
        try:
            self.queue.put_nowait((record, frame))
        except queue.Full:
            self.metrics.sink_drops.labels(self.label).inc()

    def run(self) -> None:
        failing = 0  # consecutive failures: logged when they start and when they end
        while not (self.closing.is_set() and self.queue.empty()):
            try:
                record, frame = self.queue.get(timeout=0.2)
            except queue.Empty:
                self.taken = time.monotonic()  # caught up: nothing waits
                continue
            self.taken = time.monotonic()
            try:
                self.deliver(record, frame)
            except Exception as e:  # a sink must never take the process down
                self.metrics.sink_failures.labels(self.label).inc()
                self.problem = str(e) or type(e).__name__
                if not failing:
                    log.warning(
                        "sink %s failing: %s (counted in lineside_sink_failures)", self.label, e, extra=self.tag
                    )
                failing += 1
                continue
            if failing:
                log.warning("sink %s delivering again after %d failed records", self.label, failing, extra=self.tag)
                failing, self.problem = 0, ""
        try:
            self.shutdown()
        except Exception as e:  # what it held is counted already; a traceback here would only hide that
            log.warning("sink %s did not close cleanly: %s", self.label, e, extra=self.tag)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within `timeout`), then stop."""
        self.closing.set()
        if self.ident is not None:
            self.join(timeout)

    def condition(self) -> str:
        """Why this sink delivers nothing now, "" when it does (or has not been asked to yet): /api/status."""
        return self.problem

    def deliver(self, record: dict, frame) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass


class JsonlSink(Sink):
    """A copy of the results as JSON lines, written unbuffered: a line that fails (disk full) fails in
    `deliver`, where it is counted, never again in a buffer flushed at close. A line cut short by such a
    failure is ended before the next, and one left by an earlier run is quarantined as the results log's is."""

    def __init__(self, path: Path, metrics, maxsize: int):
        super().__init__(f"jsonl:{path}", metrics, maxsize)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            end_partial_line(Path(path))
            self.file = open(path, "ab", buffering=0)
        except OSError as e:
            raise OSError(f"--sink jsonl:{path}: cannot open it for appending: {e}") from e
        self.cut = False  # the last write stopped mid-line

    def deliver(self, record, frame) -> None:
        data = memoryview((("\n" if self.cut else "") + strict_json(record) + "\n").encode())
        while data:
            data = data[self.file.write(data) :]
            self.cut = bool(data)  # a write that raises has written nothing; one cut short has

    def shutdown(self) -> None:
        self.file.close()


class Refused(ConnectionError):
    """The peer answered, and not with a delivery: re-sending the same record would not change its mind."""


class WebhookSink(Sink):
    """POSTs each record as JSON on one kept-alive connection (aiohttp, in this sink's own event loop).

    2xx is delivered. A 5xx, a timeout or a broken connection is re-sent up to
    `retries` times, after `backoff_s`, then twice that, ... (each wait drawn
    at random below its bound, so that many boxes do not return together; at
    most MAX_BACKOFF_S); once serve is stopping a failure is final at once. A
    4xx is the peer refusing this record: never re-sent. A 3xx is a failure
    unless following was asked for (then the same POST and body go there).
    """

    def __init__(
        self,
        url: str,
        metrics,
        maxsize: int,
        timeout: float = 5.0,
        follow_redirects: bool = False,
        retries: int = 3,
        backoff_s: float = 0.5,
    ):
        super().__init__(url, metrics, maxsize)
        self.url, self.timeout, self.follow = url, timeout, follow_redirects
        self.retries, self.backoff_s = retries, backoff_s
        self.loop: asyncio.AbstractEventLoop | None = None  # made in the sink's thread, used only there
        self.session: aiohttp.ClientSession | None = None
        self.attempts = 0  # POSTs sent, re-sends and redirects included

    def deliver(self, record, frame) -> None:
        body = strict_json(record).encode()
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._deliver(body))

    async def _deliver(self, body: bytes) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Content-Type": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        for attempt in range(self.retries + 1):
            try:
                await self._post(body)
                return
            except Refused:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                why = str(e) or type(e).__name__
                if attempt == self.retries or self.closing.is_set():
                    raise ConnectionError(f"webhook {self.url}: {why} ({attempt + 1} attempts)") from e
            await self._pause(random.uniform(0, min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake when serve starts stopping."""
        end = time.monotonic() + seconds
        while not self.closing.is_set() and time.monotonic() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))

    async def _post(self, body: bytes) -> None:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            self.attempts += 1
            async with self.session.post(url, data=body, allow_redirects=False) as response:
                await response.read()
                status, location = response.status, response.headers.get("Location")
            if 200 <= status < 300:
                return
            if status >= 500:
                raise ConnectionError(f"answered {status}")
            if status not in REDIRECTS or not location:
                raise Refused(f"webhook {url} answered {status}: not re-sent (a 4xx is the peer refusing the record)")
            url = self._redirect(url, status, location)
        raise Refused(f"webhook {self.url}: more than {MAX_REDIRECTS} redirects")

    def _redirect(self, url: str, status: int, location: str) -> str:
        """Where to re-send after a redirect, or raise: a redirect is delivered nowhere unless we follow it."""
        if not self.follow:
            raise Refused(
                f"webhook {url} answered {status} (to {location}): a redirect is not a "
                "delivery; fix the URL or set webhook_follow_redirects"
            )
        target = urljoin(url, location)
        if urlparse(target).scheme not in ("http", "https"):
            raise Refused(f"webhook {url} redirects to {target!r}, not an http(s) URL")
        return target

    def shutdown(self) -> None:
        if self.loop is None:
            return
        if self.session is not None:
            self.loop.run_until_complete(self.session.close())
        self.loop.close()


MAX_SPEC = 2048  # characters of one --sink value: longer is no URL a plant writes, and would fill every log line
HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _shown(spec: str) -> str:
    """The spec for an error line: its password left out, its length bounded."""
    url_password = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", spec, count=1)
    return url_password if len(url_password) <= 120 else f"{url_password[:120]}... ({len(spec)} characters)"


def check_url(spec: str) -> ParseResult:
    """A --sink URL parsed and bounded before any sink is built, so that a value which would fail only when
    the first record goes out (a port that is no number, a host no resolver takes) refuses serve at start."""
    shown = _shown(spec)
    if len(spec) > MAX_SPEC:
        raise ValueError(f"--sink {shown!r}: longer than {MAX_SPEC} characters")
    if any(c.isspace() or not c.isprintable() for c in spec):
        raise ValueError(f"--sink {shown!r}: holds a space or control character (percent-encode it, e.g. %20)")
    try:
        url = urlparse(spec)
        port = url.port
        if "[" in url.netloc:  # Python 3.10's urlparse leaves what is between the brackets unchecked; 3.11's checks
            ipaddress.ip_address(url.hostname or "")
    except ValueError as e:  # [zz]: brackets around what is no IPv6 address; :abc, :99999
        why = str(e) if "port" not in str(e).lower() else "the port must be a number in 1..65535"
        raise ValueError(f"--sink {shown!r}: {why}") from e
    if port == 0:
        raise ValueError(f"--sink {shown!r}: the port must be a number in 1..65535 (0 names no peer)")
    host = url.hostname
    if host and not _host_ok(host):
        raise ValueError(
            f"--sink {shown!r}: {host!r} is no host name or IP address (letters, digits, '-', '.'; IPv6 in brackets)"
        )
    return url


def _host_ok(host: str) -> bool:
    if ":" in host:  # urlparse took it from between brackets: an IPv6 address, which it has checked
        return True
    if re.fullmatch(r"[0-9.]+", host):  # digits and dots only: an IPv4 address or nothing (999.1.1.1)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and HOST_NAME.fullmatch(host) is not None


def parse_sink(spec: str, metrics, maxsize: int, serve: ServeSettings | None = None) -> Sink:
    """--sink value -> Sink; a bad value is refused with the field named. MQTT and webhook sinks take
    their settings (mqtt_*, webhook_*) from `serve` (unset: the defaults)."""
    serve = serve or ServeSettings()
    if spec.startswith("jsonl:"):
        if not spec[6:]:
            raise ValueError("--sink jsonl: needs a path, e.g. jsonl:results-copy.jsonl")
        return JsonlSink(Path(spec[6:]), metrics, maxsize)
    url = check_url(spec)
    if url.scheme in ("http", "https"):
        if not url.hostname or url.fragment:
            raise ValueError(f"--sink {_shown(spec)!r}: use http(s)://HOST[:PORT]/PATH (no #fragment)")
        return WebhookSink(
            spec,
            metrics,
            maxsize,
            follow_redirects=serve.webhook_follow_redirects,
            retries=serve.webhook_retries,
            backoff_s=serve.webhook_backoff_s,
        )
    if url.scheme in ("mqtt", "mqtts"):
        from .mqtt import MqttOptions, from_spec  # mqtt.py builds on Sink: imported here, not at the top

        return from_spec(spec, metrics, maxsize, MqttOptions.of(serve))
    plc = _plc_sink(url.scheme)  # PLC outputs (README, "PLC outputs"): need the plant extra
    if plc is not None:
        return plc(spec, metrics, maxsize)
    raise ValueError(
        f"--sink {spec!r}: use jsonl:PATH, mqtt(s)://HOST:PORT/PREFIX, http(s)://URL, "
        "opcua-server://HOST:PORT/PATH, opcua-write://HOST:PORT?verdict=NODEID or modbus://HOST:PORT"
    )


def _plc_sink(scheme: str):
    """The PLC output class for a --sink scheme, imported only when asked for (asyncua, pymodbus are optional)."""
    if scheme == "opcua-server":
        from .plc.opcua import OpcUaServerSink

        return OpcUaServerSink
    if scheme == "opcua-write":
        from .plc.opcua_write import OpcUaWriteSink

        return OpcUaWriteSink
    if scheme == "modbus":
        from .plc.modbus import modbus_sink  # the verdict registers, or the handshake with handshake=

        return modbus_sink
    return None
