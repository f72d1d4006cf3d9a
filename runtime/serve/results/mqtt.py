"""The MQTT sink as plants run it: credentials, TLS, a last will, one topic tree, nothing lost at QoS 1.

Under the sink's PREFIX (--sink mqtt://HOST:PORT/PREFIX, or mqtts:// for TLS):

    PREFIX/LINE/availability         retained "online" / "offline"; the broker itself writes "offline"
                                     (our last will) when this process vanishes without saying goodbye
    PREFIX/LINE/CAMERA/status        retained JSON: state (online, degraded or offline, with the problem
                                     when not online, as serve's watchdog sees the camera), run, bundle,
                                     version and the detector settings, sent again when any changes, so that
    PREFIX/LINE/CAMERA/result        each OK / NG / ERROR / TEACH line can leave its settings out
    PREFIX/LINE/CAMERA/explanation   each EXPLANATION line (the language model's later sentence)

While the broker is away paho keeps QoS 1 and 2 messages in its own bounded queue
and sends them after it reconnects: a result published then is on its way, not a
failure. Beyond `queue_max` records are dropped and counted; those still not
acknowledged at shutdown are counted as failures. Availability and status are
never queued: every connection (the first and each reconnection) publishes them
afresh, which also restores them on a broker that lost its retained messages.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import ParseResult, unquote, urlparse

from .records import strict_json
from .sinks import Sink

log = logging.getLogger("lineside.serve")

FORBIDDEN = str.maketrans({c: "_" for c in "/+#\0"})  # characters that would add or wildcard a topic level


def _version() -> str:
    try:
        return metadata.version("lineside")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class MqttOptions:
    """What the sink needs from the settings (mqtt_*), apart from the URL."""

    line: str = "line1"
    client_id: str = ""
    qos: int = 1
    username: str = ""
    password: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    queue_max: int = 1000
    drain_s: float = 10.0

    @classmethod
    def of(cls, serve) -> MqttOptions:
        """From ServeSettings; the password from mqtt_password (or LINESIDE_MQTT_PASSWORD) or its file."""
        return cls(
            line=serve.mqtt_line,
            client_id=serve.mqtt_client_id,
            qos=serve.mqtt_qos,
            username=serve.mqtt_username,
            password=_password(serve.mqtt_password, serve.mqtt_password_file),
            ca=serve.mqtt_ca,
            cert=serve.mqtt_cert,
            key=serve.mqtt_key,
            queue_max=serve.mqtt_queue,
        )


def _password(given: str, path: Path | None) -> str:
    if given and path:
        raise ValueError("settings mqtt_password and mqtt_password_file: give one of them, not both")
    if not path:
        return given
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"setting mqtt_password_file: cannot read {path} ({e})") from e
    return text.splitlines()[0] if text.strip() else ""


class _Handshake(ssl.SSLSocket):
    """An SSLSocket that leaves why its handshake failed on its context: paho tells only that a connection
    failed (on_connect_fail, no error), so an untrusted certificate or a wrong name went unsaid."""

    def do_handshake(self, *args, **kwargs):
        try:
            return super().do_handshake(*args, **kwargs)
        except ssl.SSLError as e:  # SSLCertVerificationError too
            self.context.failure = e
            raise


class TlsContext(ssl.SSLContext):
    """TLS as paho's tls_set makes it (certificate required, host name checked), with the last handshake's
    failure kept in `failure` for `connect_failure` to name."""

    sslsocket_class = _Handshake
    failure: ssl.SSLError | None = None


NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
UNTRUSTED = (2, 18, 19, 20, 21, 27)  # no issuer known, self-signed, chain not to a trusted CA, CA refused
AUTHENTICATION = (134, 135, 140)  # CONNACK: bad user name or password, not authorised, bad authentication method


def connect_failure(context: TlsContext | None, host: str, port: int, options: MqttOptions) -> str:
    """Why a connection to the broker failed before the broker said anything (paho's on_connect_fail);
    `context` is what configure() returned (None: plain MQTT)."""
    error = getattr(context, "failure", None)
    if error is None:
        return f"cannot reach the broker at {host}:{port} (nothing listening there, or no route)"
    context.failure = None
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in NAME_MISMATCH:
            return (
                f"name mismatch: the broker's certificate is not for {host!r}; connect by a name or address "
                "the certificate lists (or have it reissued for this one)"
            )
        if error.verify_code in UNTRUSTED:
            ca = f"mqtt_ca ({options.ca})" if options.ca else "the system's CAs (mqtt_ca unset)"
            return f"certificate not trusted: the broker's certificate is not signed by {ca}; set mqtt_ca to its CA"
        return f"certificate not trusted: {error.verify_message}"
    reason = str(error.reason or error)
    if "CERTIFICATE_REQUIRED" in reason:
        return "the broker wants a client certificate: set mqtt_cert and mqtt_key"
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
        return "the broker does not trust our client certificate (mqtt_cert): have it signed by the broker's CA"
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
        return f"no TLS on {host}:{port}: is it a plain listener (mqtt://) or the wrong port?"
    return f"TLS handshake failed: {reason}"


def refusal(reason_code, options: MqttOptions) -> str:
    """What a CONNACK refusal means for the settings: "Not authorized" from MQTT 3.1.1 is a wrong password."""
    if getattr(reason_code, "value", None) in AUTHENTICATION:
        who = f"user {options.username!r}" if options.username else "no user name (mqtt_username unset)"
        return (
            f"authentication refused for {who} ({reason_code}): check mqtt_username and mqtt_password "
            "or mqtt_password_file"
        )
    return str(reason_code)


def configure(client, options: MqttOptions, tls: bool, fix: str = "use mqtts://") -> TlsContext | None:
    """Credentials and TLS on a paho client from `options`: the sink's and the trigger topic's clients alike;
    the TLS context (None without TLS), which says why a handshake failed (connect_failure).

    `fix` says how to ask for TLS when certificates are given to a plain mqtt:// URL.
    ValueError naming the setting for a missing or unusable file.
    """
    if options.username or options.password:
        client.username_pw_set(options.username or None, options.password or None)
    if not tls:
        if options.ca or options.cert or options.key:
            raise ValueError(f"settings mqtt_ca, mqtt_cert, mqtt_key need TLS: {fix}")
        return None
    if options.key and not options.cert:
        raise ValueError("setting mqtt_key: needs mqtt_cert (the certificate the key belongs to)")
    for name in ("ca", "cert", "key"):
        path = getattr(options, name)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"setting mqtt_{name}: {path} is not a file")
    try:
        context = TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host names checked
        if options.ca:
            context.load_verify_locations(str(options.ca))
        else:
            context.load_default_certs()
        if options.cert:
            context.load_cert_chain(str(options.cert), str(options.key) if options.key else None)
        client.tls_set_context(context)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"settings mqtt_ca/mqtt_cert/mqtt_key: unusable for TLS ({e})") from e
    return context


def client_id(options: MqttOptions) -> str:
    """mqtt_client_id, else one of this host and process (two serves on one broker must not share one)."""
    return options.client_id or f"lineside-{socket.gethostname()}-{os.getpid()}"


def redact(spec: str) -> str:
    """The sink URL without its password, fit for a log line or an error."""
    url = urlparse(spec)
    if url.password is None:
        return spec
    return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1)).geturl()


def topic_level(text: str) -> str:
    """`text` as one topic level: separators and wildcards replaced, never empty."""
    return str(text).translate(FORBIDDEN) or "_"


def broker_port(url: ParseResult, where: str) -> int:
    """The port of an mqtt:// or mqtts:// URL, MQTT's own (1883, 8883 with TLS) where it names none; a port
    that is no number is refused naming `where` (the sink and the trigger topic both take such URLs)."""
    try:
        port = url.port
    except ValueError as e:
        raise ValueError(f"{where}: the port must be a number in 1..65535") from e
    if port == 0:  # `port or 1883` would quietly dial the default port instead
        raise ValueError(f"{where}: the port must be a number in 1..65535 (0 names no broker)")
    return port or (8883 if url.scheme == "mqtts" else 1883)


def one_topic(topic: str) -> bool:
    """Whether `topic` names one topic of ours: a wildcard or an empty level would reach others' topics, and
    $ ones are the broker's own ($SYS: its statistics)."""
    return not (any(c in topic for c in "+#\0") or "" in topic.split("/") or topic.startswith("$"))


def from_spec(spec: str, metrics, maxsize: int, options: MqttOptions) -> MqttSink:
    """mqtt://[USER[:PASSWORD]@]HOST[:PORT]/PREFIX or mqtts://... -> MqttSink; a bad value is named."""
    url, shown = urlparse(spec), redact(spec)
    prefix = url.path.strip("/")
    port = broker_port(url, f"--sink {shown!r}")
    if not url.hostname or not prefix or url.query or url.fragment:
        raise ValueError(f"--sink {shown!r}: use mqtt://HOST:PORT/PREFIX (or mqtts://HOST:PORT/PREFIX for TLS)")
    if not one_topic(prefix):
        raise ValueError(
            f"--sink {shown!r}: the topic prefix {prefix!r} may not hold +, # or empty levels, nor start with $ "
            "(the broker's own topics, $SYS)"
        )
    tls = url.scheme == "mqtts"
    options = dataclasses.replace(
        options,
        username=options.username or unquote(url.username or ""),
        password=options.password or unquote(url.password or ""),
    )
    return MqttSink(url.hostname, port, prefix, metrics, maxsize, options, tls=tls)


class MqttSink(Sink):
    """One paho client publishing the topics of this module's docstring; `from_spec` builds it from --sink."""

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        metrics,
        maxsize: int,
        options: MqttOptions = MqttOptions(),
        tls: bool = False,
    ):
        scheme = "mqtts" if tls else "mqtt"
        super().__init__(f"{scheme}://{host}:{port}/{prefix}", metrics, maxsize)
        if not options.line or topic_level(options.line) != options.line:
            raise ValueError(f"setting mqtt_line: {options.line!r} must be one topic level (no /, +, # or empty)")
        import paho.mqtt.client as mqtt

        self.mqtt, self.host, self.port, self.options = mqtt, host, port, options
        self.base = f"{prefix}/{options.line}"
        self.availability = f"{self.base}/availability"
        self.client_id = client_id(options)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self.tls = configure(self.client, options, tls, f"write the sink as mqtts://{host}...")
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.max_queued_messages_set(options.queue_max)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_publish = self._acknowledged
        self.client.on_connect = self._connected
        self.client.on_connect_fail = self._unreached
        self.client.on_disconnect = self._disconnected
        self.link = "connecting"  # why the broker is not taking records now, "" while connected (/api/status)
        self.lock = threading.Lock()
        self.waiting: dict[int, str] = {}  # message id -> "record" / "control", until the broker acknowledges it
        self.early: set[int] = set()  # acknowledged before publish() returned its id to us
        self.statuses: dict[str, dict] = {}  # camera -> its retained status
        self.conditions: dict[str, tuple[str, str]] = {}  # camera -> (state, problem), from camera_condition()
        self.version = _version()

    def start(self) -> None:
        """Connect in the background (the broker may come later) and start draining the queue."""
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        super().start()

    # --- paho's network thread ----------------------------------------------------------------------------

    def condition(self) -> str:
        return self.link if self.link and self.link != "connecting" else super().condition()

    def _unreached(self, client, userdata) -> None:
        self.link = connect_failure(self.tls, self.host, self.port, self.options)
        log.warning("sink %s: cannot connect: %s", self.label, self.link, extra=self.tag)

    def _connected(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            self.link = f"the broker refused the connection: {refusal(reason_code, self.options)}"
            log.warning("sink %s: %s", self.label, self.link, extra=self.tag)
            return
        if self.link and self.link != "connecting":
            log.info("sink %s: connected to the broker (was: %s)", self.label, self.link, extra=self.tag)
        self.link = ""
        self._control(self.availability, "online")
        with self.lock:
            statuses = list(self.statuses.items())
        for camera, status in statuses:
            self._control(f"{self.base}/{camera}/status", strict_json(status))

    def _disconnected(self, client, userdata, flags, reason_code, properties=None) -> None:
        if self.link == "connecting":  # it took TCP and TLS, then hung up before any CONNACK
            self.link = f"the broker closed the connection before accepting it ({reason_code})"
            if self.tls is not None:
                self.link += ": does it want a client certificate (mqtt_cert, mqtt_key), or not trust ours?"
            log.warning("sink %s: %s", self.label, self.link, extra=self.tag)
            return
        if self.link:  # never connected: the refusal was said already ("Unspecified error" would only hide it)
            return
        self.link = f"broker connection lost ({reason_code}); reconnecting"
        if not self.closing.is_set():
            log.warning(
                "sink %s: broker connection lost (%s); results wait in paho's queue",
                self.label,
                reason_code,
                extra=self.tag,
            )

    def _acknowledged(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self.lock:
            if self.waiting.pop(mid, None) is None:
                self.early.add(mid)

    # --- the sink's thread --------------------------------------------------------------------------------

    def _track(self, mid: int, kind: str) -> None:
        with self.lock:  # never held across publish(): paho calls _acknowledged holding its own lock
            if mid in self.early:
                self.early.discard(mid)
            else:
                self.waiting[mid] = kind

    def _control(self, topic: str, payload: str) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if info.rc in (self.mqtt.MQTT_ERR_SUCCESS, self.mqtt.MQTT_ERR_NO_CONN):
            self._track(info.mid, "control")

    def pending(self) -> int:
        """Records published and not yet acknowledged (waiting in paho's queue or in flight)."""
        with self.lock:
            return sum(kind == "record" for kind in self.waiting.values())

    def deliver(self, record, frame) -> None:
        camera = topic_level(record.get("camera") or "0")  # lines of an unnamed camera carry none
        if record.get("label") == "EXPLANATION":
            self._publish(f"{self.base}/{camera}/explanation", record)
            return
        if record.get("settings"):
            self._note_status(camera, record)
        self._publish(f"{self.base}/{camera}/result", {k: v for k, v in record.items() if k != "settings"})

    def camera_condition(self, camera: str, state: str, problem: str = "") -> None:
        """The camera's condition changed (online, degraded or offline, and why; serve's watchdog calls this):
        its retained status says so at once, before any result shows it (a lost camera sends none)."""
        camera = topic_level(camera or "0")
        with self.lock:
            self.conditions[camera] = (state, problem)
            if state == "online" and camera not in self.statuses:
                return  # its first result's status says so, with the run and settings (a bare one would not)
            known = self.statuses.get(camera) or {
                "line": self.options.line,
                "camera": camera,
                "client_id": self.client_id,
                "version": self.version,
            }
            status = self.statuses[camera] = {**known, "state": state, "problem": problem, "since": time.time()}
        if self.client.is_connected():  # else the next connection publishes it
            self._control(f"{self.base}/{camera}/status", strict_json(status))

    def _note_status(self, camera: str, record: dict) -> None:
        """The camera's retained status, published when what it says changes (normally once)."""
        with self.lock:
            state, problem = self.conditions.get(camera, ("online", ""))
        status = {
            "state": state,
            "problem": problem,
            "line": self.options.line,
            "camera": camera,
            "client_id": self.client_id,
            "version": self.version,
            "run": record.get("run"),
            "category": record.get("category"),
            "bundle_id": record.get("bundle_id"),
            "settings": record["settings"],
        }
        with self.lock:
            known = self.statuses.get(camera)
            if known is not None and {**known, "since": None} == {**status, "since": None}:
                return
            status["since"] = time.time()
            self.statuses[camera] = status
        if self.client.is_connected():  # else the next connection publishes it
            self._control(f"{self.base}/{camera}/status", strict_json(status))

    def _publish(self, topic: str, record: dict) -> None:
        info = self.client.publish(topic, strict_json(record), qos=self.options.qos)
        if info.rc == self.mqtt.MQTT_ERR_QUEUE_SIZE:
            self.metrics.sink_drops.labels(self.label).inc()
            log.warning(
                "sink %s: %d records wait for the broker already (mqtt_queue); record dropped "
                "(counted in lineside_sink_drops)",
                self.label,
                self.options.queue_max,
                extra=self.tag,
            )
            return
        # paho answers NO_CONN while the broker is away but keeps a QoS 1/2 message in its queue and sends it
        # after the next CONNACK: that is a record on its way. At QoS 0 it is gone.
        if info.rc == self.mqtt.MQTT_ERR_NO_CONN and self.options.qos == 0:
            raise ConnectionError("the broker is away and QoS 0 records are not kept (set mqtt_qos 1)")
        if info.rc not in (self.mqtt.MQTT_ERR_SUCCESS, self.mqtt.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"publish refused: {self.mqtt.error_string(info.rc)}")
        self._track(info.mid, "record")

    def close(self, timeout: float | None = None) -> None:
        super().close(self.options.drain_s + 5.0 if timeout is None else timeout)

    def shutdown(self) -> None:
        """Say goodbye (offline, retained), wait a while for acknowledgements, count the records never acknowledged."""
        if self.client.is_connected():
            with self.lock:
                statuses = list(self.statuses.items())
            for camera, status in statuses:
                self._control(
                    f"{self.base}/{camera}/status",
                    strict_json({**status, "state": "offline", "problem": "serve stopped"}),
                )
            self._control(self.availability, "offline")
        deadline = time.monotonic() + self.options.drain_s
        while self.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = self.pending()
        if lost:
            self.metrics.sink_failures.labels(self.label).inc(lost)
            log.warning(
                "sink %s: %d records never acknowledged by the broker (counted in lineside_sink_failures)",
                self.label,
                lost,
                extra=self.tag,
            )
        self.client.disconnect()
        self.client.loop_stop()
