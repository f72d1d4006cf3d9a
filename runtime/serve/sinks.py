"""Where results go besides the durable log: JSONL files, MQTT, webhooks, NG images.

Each sink runs in its own thread behind a bounded queue, so a slow or dead peer
never delays inspection: when its queue is full new records are dropped and
counted, and failed deliveries are counted too.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import cv2

log = logging.getLogger("lineside.serve")


class Sink(threading.Thread):
    """Base: a bounded queue drained by `deliver(record)` in this thread."""

    def __init__(self, name: str, metrics, maxsize: int):
        super().__init__(name=f"sink-{name}", daemon=True)
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
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def shutdown(self) -> None:
        self.file.close()


class WebhookSink(Sink):
    def __init__(self, url: str, metrics, maxsize: int, timeout: float = 5.0):
        super().__init__(url, metrics, maxsize)
        self.url, self.timeout = url, timeout

    def deliver(self, record, frame) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(record).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if response.status >= 300:
                raise urllib.error.HTTPError(self.url, response.status, "webhook refused", None, None)


class MqttSink(Sink):
    """Publishes each record as JSON (QoS 1). paho reconnects in the background; while
    the broker is away, publishes fail and are counted."""

    def __init__(self, host: str, port: int, topic: str, metrics, maxsize: int):
        super().__init__(f"mqtt://{host}:{port}/{topic}", metrics, maxsize)
        import paho.mqtt.client as mqtt

        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lineside-{id(self):x}")
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def deliver(self, record, frame) -> None:
        if not self.client.is_connected():
            raise ConnectionError("broker not connected")
        info = self.client.publish(self.topic, json.dumps(record), qos=1)
        info.wait_for_publish(timeout=5)
        if not info.is_published():
            raise ConnectionError(f"publish not acknowledged (rc {info.rc})")

    def shutdown(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class NgImageSink(Sink):
    """NG frames as JPEG with a JSON sidecar, under a disk cap (oldest removed first)."""

    def __init__(self, folder: Path, cap_mb: float, metrics, maxsize: int):
        super().__init__(f"ng:{folder}", metrics, maxsize)
        self.folder, self.cap = Path(folder), int(cap_mb * 1e6)
        self.folder.mkdir(parents=True, exist_ok=True)

    def offer(self, record: dict, frame=None) -> None:
        if record.get("label") == "NG" and frame is not None:
            super().offer(record, frame)

    def deliver(self, record, frame) -> None:
        stem = self.folder / f"{record['run']}_{record['frame_id']:08d}"
        if not cv2.imwrite(str(stem) + ".jpg", frame):
            raise OSError(f"could not write {stem}.jpg")
        Path(str(stem) + ".json").write_text(json.dumps(record, indent=1))
        self._rotate()

    def _rotate(self) -> None:
        files = sorted(self.folder.glob("*_*.*"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.cap:
            victim = files.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)


def parse_sink(spec: str, metrics, maxsize: int) -> Sink:
    """--sink value -> Sink; a bad value is refused with the field named."""
    if spec.startswith("jsonl:"):
        if not spec[6:]:
            raise ValueError("--sink jsonl: needs a path, e.g. jsonl:results-copy.jsonl")
        return JsonlSink(Path(spec[6:]), metrics, maxsize)
    url = urlparse(spec)
    if url.scheme in ("http", "https") and url.netloc:
        return WebhookSink(spec, metrics, maxsize)
    if url.scheme == "mqtt":
        topic = url.path.lstrip("/")
        if not url.hostname or not topic:
            raise ValueError(f"--sink {spec!r}: use mqtt://HOST:PORT/TOPIC")
        return MqttSink(url.hostname, url.port or 1883, topic, metrics, maxsize)
    raise ValueError(f"--sink {spec!r}: use jsonl:PATH, mqtt://HOST:PORT/TOPIC or http(s)://URL")
