"""Triggered inspection: one inspection per trigger, from an HTTP POST or an MQTT command topic.

With `trigger = software` the inspector inspects no frame on its own: each trigger
takes exactly one, the first a live source captures at or after the trigger's
time (for a recording, its next frame), and the result line carries the
trigger's id and time, and the part id when the trigger names one (`{"id": ..., "part_id": ...}`,
or `?part_id=`). Triggers wait in a bounded queue while the inspector is
busy; one that finds the queue full is refused, never dropped unseen: HTTP
answers 429, MQTT publishes the refusal on TOPIC/refused, and both are counted
in lineside_triggers_total{outcome="refused"}. Triggers still waiting when
serve stops are counted as unserved and logged with their ids.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from ..results.mqtt import MqttOptions, broker_port, client_id, configure, connect_failure, one_topic, redact, refusal
from .sources import Frame

log = logging.getLogger("lineside.serve")

MAX_ID = 128  # characters of a trigger id
MAX_BODY = 4096  # bytes of a trigger request or message
REFIRE_S = 2.0  # a fired source (a camera's software trigger) that sent no frame is fired again


@dataclass(frozen=True)
class Trigger:
    id: str  # the caller's id (a part number, a PLC counter), or VIA-N when it gave none
    time: float  # unix seconds when it arrived
    via: str  # "http" or "mqtt"
    part_id: str | None = None  # the part the caller says is in front of the camera, if it said


class TriggerRefused(Exception):
    """The queue is full: the trigger was not taken (and was counted)."""


def trigger_id(payload: bytes, query_id: str | None = None) -> str | None:
    """The id a request or message gives: `{"id": ...}` JSON, plain text, or `?id=`; None for none."""
    return trigger_fields(payload, query_id)[0]


def trigger_fields(
    payload: bytes, query_id: str | None = None, query_part: str | None = None
) -> tuple[str | None, str | None]:
    """(id, part id) a request or message gives: `{"id": ..., "part_id": ...}` JSON, plain text (the id),
    or `?id=` and `?part_id=`; None for each not given.

    ValueError (naming the problem) for a body too long, not UTF-8, a JSON value that is
    not an object with string or integer ids, or an id with control characters.
    """
    if len(payload) > MAX_BODY:
        raise ValueError(f"trigger body of {len(payload)} bytes; at most {MAX_BODY}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError("trigger body is not UTF-8 text") from e
    value, part = query_id, query_part
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"trigger body is not valid JSON: {e}") from e
        except RecursionError as e:  # [[[[... within MAX_BODY: json's parser recurses once per level
            raise ValueError('trigger body is JSON nested too deeply; send {"id": ..., "part_id": ...}') from e
        value, part = data.get("id", value), data.get("part_id", part)
    elif text:
        value = text
    return _checked(value, "trigger id"), _checked(part, "part_id")


def _checked(value, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{what} must be a string or an integer, got {type(value).__name__}")
    value = str(value)
    if not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise ValueError(f"{what} must be 1 to {MAX_ID} printable characters, got {value[:40]!r}")
    return value


class TriggerQueue:
    """Triggers waiting for the inspector, at most `bound`; the one being served is not counted."""

    def __init__(self, bound: int, metrics, fire=lambda: True):
        if bound < 1:
            raise ValueError(f"setting trigger_queue: {bound} must be >= 1")
        self.bound, self.metrics, self.fire = bound, metrics, fire  # fire: the source's, e.g. a camera's trigger
        self._fired_at: float | None = None
        self._waiting: collections.deque[Trigger] = collections.deque()
        self._cond = threading.Condition()
        self._count = 0
        self.current: Trigger | None = None  # taken, its frame not yet found
        for outcome in ("accepted", "refused", "inspected", "unserved"):
            metrics.triggers.labels(outcome)

    def offer(self, given_id: str | None, via: str, part_id: str | None = None) -> Trigger:
        """Queue a trigger arriving now (for part `part_id`, if known); TriggerRefused when `bound` already wait."""
        with self._cond:
            if len(self._waiting) >= self.bound:
                self.metrics.triggers.labels("refused").inc()
                raise TriggerRefused(
                    f"{len(self._waiting)} triggers already wait (trigger_queue); "
                    f"trigger {given_id or '(no id)'} refused"
                )
            self._count += 1
            trigger = Trigger(given_id or f"{via}-{self._count}", time.time(), via, part_id)
            self._waiting.append(trigger)
            self.metrics.triggers.labels("accepted").inc()
            self.metrics.triggers_waiting.set(len(self._waiting))
            self._cond.notify_all()
            return trigger

    def refused(self) -> None:
        """A malformed trigger (bad id, body too long): refused, and counted like a full queue's."""
        self.metrics.triggers.labels("refused").inc()

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def oldest(self) -> float | None:
        """When the oldest trigger still without its frame arrived (unix seconds), None when none waits:
        one left waiting too long means serve cannot do its job (health)."""
        with self._cond:
            first = self.current or (self._waiting[0] if self._waiting else None)
            return first.time if first is not None else None

    def _take(self, timeout: float) -> Trigger | None:
        with self._cond:
            if not self._waiting:
                self._cond.wait(timeout)
            if not self._waiting:
                return None
            self.current = self._waiting.popleft()
            self.metrics.triggers_waiting.set(len(self._waiting))
            return self.current

    def next_frame(self, slot, live: bool, stop: threading.Event) -> Frame | None:
        """The next trigger's frame, marked with it; None when no trigger came or serve is stopping.

        Live: the first frame captured at or after the trigger (older ones are passed over).
        A recording: its next frame, whenever it was read. The source is fired when the trigger
        is taken (a camera's software trigger), and again every REFIRE_S while no frame came.
        """
        trigger = self.current or self._take(0.2)
        if trigger is None:
            return None
        while True:
            if self._fired_at is None or time.monotonic() - self._fired_at > REFIRE_S:
                self._fired_at = time.monotonic() if self.fire() else None
            frame = slot.get(timeout=0.2)
            if frame is not None and (not live or frame.time >= trigger.time):
                self.current = self._fired_at = None
                marked = dataclasses.replace(frame, trigger_id=trigger.id, trigger_time=trigger.time)
                if trigger.part_id:  # the caller's word over the file name's (and over a code in the frame)
                    marked = dataclasses.replace(marked, part_id=trigger.part_id, part_from="trigger")
                return marked
            if stop.is_set():
                return None

    def inspected(self) -> None:
        self.metrics.triggers.labels("inspected").inc()

    def close(self) -> None:
        """Serve stops: count and name the triggers no frame was found for."""
        with self._cond:
            left = ([self.current] if self.current else []) + list(self._waiting)
            self._waiting.clear()
            self.current = None
            self.metrics.triggers_waiting.set(0)
        if left:
            self.metrics.triggers.labels("unserved").inc(len(left))
            log.warning(
                "serve stopped before %d triggers found a frame: %s", len(left), ", ".join(t.id for t in left[:20])
            )


class MqttTriggers:
    """Subscribes to an MQTT command topic; each message is one trigger (payload: id, {"id": ...} or empty).

    The client takes the sink's mqtt_* settings (user, password, CA, client certificate, client id; mqtts://
    for TLS), configured by the same function. A refused or malformed message is answered on TOPIC/refused
    with its id and the reason; a broker that refuses the connection is logged at each attempt.
    """

    def __init__(self, url: str, queue: TriggerQueue, options: MqttOptions | None = None, camera: str = ""):
        import paho.mqtt.client as mqtt

        where = parse_mqtt_url(url)
        self.host, self.port, self.topic = where.host, where.port, where.topic
        self.queue, self.mqtt = queue, mqtt
        options = options or MqttOptions()
        options = dataclasses.replace(
            options, username=options.username or where.username, password=options.password or where.password
        )
        # never the sink's own id: a broker drops the older of two connections that share one
        self.client_id = f"{client_id(options)}-trigger" + (f"-{camera}" if camera else "")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self.options = options
        self.tls = configure(self.client, options, where.tls, "write trigger_mqtt as mqtts://HOST:PORT/TOPIC")
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._connected
        self.client.on_connect_fail = lambda *_: log.warning(
            "trigger topic %s: cannot connect: %s", self.topic, connect_failure(self.tls, self.host, self.port, options)
        )
        self.client.on_message = self._message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning(
                "trigger topic %s: the broker refused the connection: %s",
                self.topic,
                refusal(reason_code, self.options),
            )
            return
        client.subscribe(self.topic, qos=1)  # again after every reconnection

    def _message(self, client, userdata, message) -> None:
        """On paho's network thread: anything raised here would end that thread and with it the topic."""
        try:
            given, part = trigger_fields(message.payload)
            self.queue.offer(given, "mqtt", part)
        except (ValueError, TriggerRefused) as e:
            if isinstance(e, ValueError):
                self.queue.refused()
            log.warning("MQTT trigger on %s refused: %s", self.topic, e)
            answer = {"error": str(e), "payload": message.payload[:200].decode("utf-8", "replace")}
            client.publish(f"{self.topic}/refused", json.dumps(answer), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class TriggerTopic:
    host: str
    port: int
    topic: str
    tls: bool
    username: str = ""
    password: str = ""


def parse_mqtt_url(url: str) -> TriggerTopic:
    """mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC -> TriggerTopic; ValueError naming the setting otherwise."""
    parsed, shown = urlparse(url), redact(url)
    topic = parsed.path.lstrip("/")
    port = broker_port(parsed, f"setting trigger_mqtt: {shown!r}")
    if (
        parsed.scheme not in ("mqtt", "mqtts")
        or not parsed.hostname
        or not one_topic(topic)  # $SYS among them: the broker's statistics would trigger inspections
        or parsed.query
        or parsed.fragment
        or "#" in url
    ):
        raise ValueError(
            f"setting trigger_mqtt: {shown!r}: use mqtt://HOST:PORT/TOPIC or mqtts:// for TLS "
            "(no wildcards, empty levels, $ topics or query)"
        )
    tls = parsed.scheme == "mqtts"
    return TriggerTopic(
        parsed.hostname,
        port,
        topic,
        tls,
        unquote(parsed.username or ""),
        unquote(parsed.password or ""),
    )
