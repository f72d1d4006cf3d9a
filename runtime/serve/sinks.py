"""Where results go besides the durable log: JSONL files, MQTT, webhooks (NG images: ngstore.py).

Each sink runs in its own thread behind a bounded queue, so a slow or dead peer
never delays inspection: when its queue is full new records are dropped and
counted, and failed deliveries are counted too. A delivery counts only when the
peer took the record: MQTT records wait in paho's bounded queue while the
broker is away, and a webhook's redirect is a failure unless following it was
asked for (then the same POST and body go to the new place).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlparse

from .records import strict_json

log = logging.getLogger("lineside.serve")

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


class Sink(threading.Thread):
    """Base: a bounded queue drained by `deliver(record)` in this thread."""

    def __init__(self, name: str, metrics, maxsize: int):
        super().__init__(name=f"sink-{name}", daemon=True)
        if maxsize < 1:
            raise ValueError(f"setting sink_queue: {maxsize} must be >= 1")
        self.label, self.metrics = name, metrics
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.closing = threading.Event()

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
                continue
            try:
                self.deliver(record, frame)
            except Exception as e:  # a sink must never take the process down
                self.metrics.sink_failures.labels(self.label).inc()
                if not failing:
                    log.warning("sink %s failing: %s (counted in lineside_sink_failures)", self.label, e)
                failing += 1
                continue
            if failing:
                log.warning("sink %s delivering again after %d failed records", self.label, failing)
                failing = 0
        self.shutdown()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within `timeout`), then stop."""
        self.closing.set()
        if self.ident is not None:
            self.join(timeout)

    def deliver(self, record: dict, frame) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass


class JsonlSink(Sink):
    def __init__(self, path: Path, metrics, maxsize: int):
        super().__init__(f"jsonl:{path}", metrics, maxsize)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def deliver(self, record, frame) -> None:
        self.file.write(strict_json(record) + "\n")
        self.file.flush()

    def shutdown(self) -> None:
        self.file.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow 301/302 as a GET without the body and report success: never let it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx then surfaces as an HTTPError, which deliver() judges


class WebhookSink(Sink):
    """POSTs each record as JSON; 2xx is delivered, anything else (3xx included) a counted failure."""

    def __init__(self, url: str, metrics, maxsize: int, timeout: float = 5.0, follow_redirects: bool = False):
        super().__init__(url, metrics, maxsize)
        self.url, self.timeout, self.follow = url, timeout, follow_redirects
        self.opener = urllib.request.build_opener(_NoRedirect)

    def deliver(self, record, frame) -> None:
        body, url = strict_json(record).encode(), self.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self._post(url, body)
                return
            except urllib.error.HTTPError as e:
                e.close()
                url = self._redirect(url, e)
        raise ConnectionError(f"webhook {self.url}: more than {MAX_REDIRECTS} redirects")

    def _post(self, url: str, body: bytes) -> None:
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        with self.opener.open(request, timeout=self.timeout) as response:
            response.read()

    def _redirect(self, url: str, error: urllib.error.HTTPError) -> str:
        """Where to re-send after a redirect, or raise: a redirect is delivered nowhere unless we follow it."""
        location = error.headers.get("Location") if error.headers else None
        if error.code not in REDIRECTS or not location:
            raise error
        if not self.follow:
            raise ConnectionError(
                f"webhook {url} answered {error.code} (to {location}): a redirect is not a "
                "delivery; fix the URL or set webhook_follow_redirects"
            )
        target = urljoin(url, location)
        if urlparse(target).scheme not in ("http", "https"):
            raise ConnectionError(f"webhook {url} redirects to {target!r}, not an http(s) URL")
        return target


class MqttSink(Sink):
    """Publishes each record as JSON at QoS 1.

    While the broker is away paho keeps QoS 1 messages in its own queue (capped
    at `queue_max`: beyond it records are dropped and counted in
    lineside_sink_drops) and sends them after it reconnects; `pending` counts
    those not yet acknowledged. At shutdown it waits a while for them; the ones
    still unacknowledged are counted as failures.
    """

    def __init__(
        self, host: str, port: int, topic: str, metrics, maxsize: int, queue_max: int = 1000, drain_s: float = 10.0
    ):
        super().__init__(f"mqtt://{host}:{port}/{topic}", metrics, maxsize)
        self.drain_s = drain_s
        import paho.mqtt.client as mqtt

        self.mqtt, self.host, self.port, self.topic = mqtt, host, port, topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lineside-{id(self):x}")
        self.client.max_queued_messages_set(queue_max)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_publish = self._acknowledged
        self.pending, self.lock = 0, threading.Lock()

    def start(self) -> None:
        """Connect in the background (the broker may come later) and start draining the queue."""
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        super().start()

    def _acknowledged(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self.lock:
            self.pending -= 1

    def deliver(self, record, frame) -> None:
        info = self.client.publish(self.topic, strict_json(record), qos=1)
        if info.rc == self.mqtt.MQTT_ERR_QUEUE_SIZE:
            self.metrics.sink_drops.labels(self.label).inc()
            log.warning(
                "sink %s: %d records wait for the broker already; record dropped (counted in lineside_sink_drops)",
                self.label,
                self.pending,
            )
            return
        # paho 2.2 answers NO_CONN while the broker is away but keeps a QoS 1 message in its queue
        # (Client.publish) and sends it after the next CONNACK: that is a record on its way, not a failure.
        if info.rc not in (self.mqtt.MQTT_ERR_SUCCESS, self.mqtt.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"publish refused: {self.mqtt.error_string(info.rc)}")
        with self.lock:
            self.pending += 1

    def close(self, timeout: float | None = None) -> None:
        super().close(self.drain_s + 5.0 if timeout is None else timeout)

    def shutdown(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while self.pending > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pending > 0:
            self.metrics.sink_failures.labels(self.label).inc(self.pending)
            log.warning(
                "sink %s: %d records never acknowledged by the broker (counted in lineside_sink_failures)",
                self.label,
                self.pending,
            )
        self.client.disconnect()
        self.client.loop_stop()


def parse_sink(spec: str, metrics, maxsize: int, mqtt_queue: int = 1000, follow_redirects: bool = False) -> Sink:
    """--sink value -> Sink; a bad value is refused with the field named."""
    if spec.startswith("jsonl:"):
        if not spec[6:]:
            raise ValueError("--sink jsonl: needs a path, e.g. jsonl:results-copy.jsonl")
        return JsonlSink(Path(spec[6:]), metrics, maxsize)
    url = urlparse(spec)
    if url.scheme in ("http", "https") and url.netloc:
        return WebhookSink(spec, metrics, maxsize, follow_redirects=follow_redirects)
    if url.scheme == "mqtt":
        topic = url.path.lstrip("/")
        if not url.hostname or not topic:
            raise ValueError(f"--sink {spec!r}: use mqtt://HOST:PORT/TOPIC")
        return MqttSink(url.hostname, url.port or 1883, topic, metrics, maxsize, mqtt_queue)
    raise ValueError(f"--sink {spec!r}: use jsonl:PATH, mqtt://HOST:PORT/TOPIC or http(s)://URL")
