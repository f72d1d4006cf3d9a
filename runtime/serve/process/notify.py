"""systemd's readiness and watchdog protocol (sd_notify), spoken only when systemd asks for it.

Under `Type=notify` systemd counts serve as started only once it says READY=1, that is once HTTP
answers and the cameras run, not when the process merely exists (the bundle's check alone takes
seconds). With `WatchdogSec=` systemd restarts serve when WATCHDOG=1 stops coming; serve sends it
only while `Server.health()` holds, what /healthz answers, so a line that stalls (a lost camera, a
hung inspector, a sink left waiting) is restarted as a hung process would be. STOPPING=1 says the
drain has begun, so systemd waits TimeoutStopSec for it instead of calling it a hang.

Without NOTIFY_SOCKET (a shell, a container, a test) nothing is sent and no thread runs. The
protocol is one datagram of `NAME=value` lines to a unix socket: the socket module is enough.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger("lineside.serve")

IDLE_S = 5.0  # how often STATUS= is refreshed when systemd asked for no watchdog


class Notifier:
    """The socket systemd named in NOTIFY_SOCKET (a path, or @name in the abstract namespace), and the
    watchdog interval it asked for in WATCHDOG_USEC when WATCHDOG_PID is this process or unset."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        name = environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + name[1:] if name.startswith("@") else name) if name[:1] in ("/", "@") else None
        if name and self.address is None:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket path or @name; systemd will not hear serve", name)
        self.watchdog_s = _watchdog_s(environ) if self.address else None
        self._failed = False

    def send(self, *fields: str) -> bool:
        """One datagram of NAME=value lines; False (said once in the log) when the socket refuses it."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as e:
            if not self._failed:
                log.warning("cannot notify systemd at NOTIFY_SOCKET (%s): %s", self.address.lstrip("\0"), e)
            self._failed = True
            return False


def _watchdog_s(environ: Mapping[str, str]) -> float | None:
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec or (pid and pid != str(os.getpid())):
        return None  # no watchdog, or one meant for another process of the unit
    if not usec.isdigit() or int(usec) == 0:
        log.warning("WATCHDOG_USEC=%s is not a positive count of microseconds; no watchdog pings", usec)
        return None
    return int(usec) / 1e6


class Watch:
    """READY=1 at start(), then WATCHDOG=1 every half watchdog interval while `health()` is ok (STATUS=
    names the problem while it is not), and STOPPING=1 once `stop` is set or close() is called."""

    def __init__(self, health: Callable[[], tuple[bool, str]], stop: threading.Event, notifier: Notifier | None = None):
        self.health, self.stop = health, stop
        self.notifier = notifier or Notifier()
        self._lock, self._stopping = threading.Lock(), False

    def start(self) -> Watch:
        if self.notifier.address is None:
            return self
        self.notifier.send("READY=1", "STATUS=serving")
        threading.Thread(target=self._run, name="sd-notify", daemon=True).start()
        return self

    def _run(self) -> None:
        period = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else IDLE_S
        said = "serving"
        while not self.stop.wait(period) and not self._stopping:
            ok, problem = self.health()
            status = "serving" if ok else f"unhealthy: {problem}"
            fields = ["WATCHDOG=1"] if ok and self.notifier.watchdog_s else []
            if status != said:
                fields.append(f"STATUS={status}")
            if fields:
                self.notifier.send(*fields)
            said = status
        self.close()

    def close(self) -> None:
        """STOPPING=1, once: serve is draining (asked to stop, or its recordings ended)."""
        with self._lock:
            if self._stopping or self.notifier.address is None:
                return
            self._stopping = True
        self.notifier.send("STOPPING=1", "STATUS=stopping: draining frames, sinks and the results log")
