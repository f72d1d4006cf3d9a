"""Issue 29, item 4: serve speaks systemd's notification protocol (runtime/serve/process/notify.py) to a real unix
datagram socket, as systemd's would be: READY=1 once it serves, WATCHDOG=1 only while /healthz answers 200,
STOPPING=1 when SIGTERM (or the end of a recording) starts the drain. The serve here is a real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from runtime.serve.process.notify import Notifier, Watch
from tests.controlled import CATEGORY
from tests.serving import http_get, parts_folder, strict_lines, wait_for

ROOT = Path(__file__).resolve().parents[1]
MISSING = "v4l2:///dev/lineside-no-such-camera"  # a V4L2 device that is not there: unhealthy after the bound


class Listener:
    """A unix datagram socket bound where NOTIFY_SOCKET points (a path, or @name), and every message it hears."""

    def __init__(self, name: str):
        self.name, self.heard, self.done = name, [], threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name[1:] if name.startswith("@") else name)
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        while not self.done.is_set():
            try:
                self.heard.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def fields(self, name: str, after: float = 0.0) -> list[str]:
        """Every value of NAME= heard after the monotonic time `after`."""
        lines = [x.partition("=") for t, message in self.heard if t > after for x in message.split("\n")]
        return [value for key, _, value in lines if key == name]

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listener():
    folder = tempfile.mkdtemp(prefix="sd-")  # short: a unix socket's path holds 107 bytes
    heard = Listener(os.path.join(folder, "notify"))
    yield heard
    heard.close()
    os.unlink(heard.name)
    os.rmdir(folder)


def _serve(controlled, source, results, env, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runtime.serve", "--bundle", str(controlled), "--category", CATEGORY]
    cmd += ["--source", str(source), "--results", str(results), "--port", "0", "--no-explain", *extra]
    out = subprocess.PIPE
    return subprocess.Popen(cmd, cwd=ROOT, env=os.environ | env, stdout=out, stderr=subprocess.DEVNULL, text=True)


def test_serve_is_ready_pings_while_healthy_only_and_says_stopping_on_sigterm(controlled, tmp_path, listener):
    env = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    proc = _serve(controlled, MISSING, tmp_path / "r.jsonl", env, "--health-stall-s", "2", "--reconnect-max-s", "0.2")
    try:
        port = int(re.match(r"serving on http://[\d.]+:(\d+)", proc.stdout.readline())[1])
        wait_for(lambda: listener.fields("READY"), 10, "no READY=1")
        wait_for(lambda: http_get(port, "/healthz")[0] == 503, 15, "/healthz never failed")
        unhealthy = time.monotonic()
        healthy_pings = listener.fields("WATCHDOG")
        time.sleep(1.5)  # seven watchdog periods
        late = listener.fields("WATCHDOG", after=unhealthy + 0.3)  # 0.3 s: a ping decided just before the 503
        statuses = listener.fields("STATUS")
        assert listener.fields("STOPPING") == []
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert listener.fields("READY") == ["1"]
    assert len(healthy_pings) >= 3 and set(healthy_pings) == {"1"}, healthy_pings
    assert late == [], f"WATCHDOG=1 sent while /healthz answered 503: {late}"
    assert statuses[0] == "serving" and statuses[-1].startswith(f"unhealthy: source '{MISSING}' away for"), statuses
    assert listener.fields("STOPPING") == ["1"]


def test_a_recording_served_to_its_end_says_ready_then_stopping_once(controlled, tmp_path, listener):
    frames = parts_folder(tmp_path / "frames", 4)
    proc = _serve(controlled, frames, tmp_path / "r.jsonl", {"NOTIFY_SOCKET": listener.name})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert len(strict_lines(tmp_path / "r.jsonl")) == 4
    wait_for(lambda: listener.fields("STOPPING"), 5, "no STOPPING=1")
    said = [m.split("\n")[0] for _, m in listener.heard]
    assert said[0] == "READY=1" and said[-1] == "STOPPING=1" and said.count("STOPPING=1") == 1, said
    assert listener.fields("WATCHDOG") == []  # systemd asked for no watchdog


def test_an_abstract_socket_is_reached_and_a_watchdog_for_another_process_is_not_ours():
    name = f"@lineside-test-{os.getpid()}-{time.monotonic_ns()}"
    heard = Listener(name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_s == 0.2
        stop = threading.Event()
        watch = Watch(lambda: (True, ""), stop, notifier).start()
        wait_for(lambda: heard.fields("WATCHDOG"), 5, "no WATCHDOG=1 on the abstract socket")
        stop.set()
        wait_for(lambda: heard.fields("STOPPING"), 5, "no STOPPING=1")
        watch.close()  # a second time: said once
        time.sleep(0.1)
        assert heard.fields("READY") == ["1"] and heard.fields("STOPPING") == ["1"]
    finally:
        heard.close()
    other = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.address and other.watchdog_s is None


def test_without_notify_socket_nothing_is_sent_and_a_bad_one_is_said(caplog):
    assert Notifier({}).send("READY=1") is False
    with caplog.at_level("WARNING", "lineside.serve"):
        assert Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).address is None
        assert Notifier({"NOTIFY_SOCKET": "/", "WATCHDOG_USEC": "soon"}).watchdog_s is None
        gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/lineside/notify"})
        assert gone.send("READY=1") is False and gone.send("WATCHDOG=1") is False
    said = [r.getMessage() for r in caplog.records]
    assert "vsock:2:1234 is not a unix socket path" in said[0] and "WATCHDOG_USEC=soon" in said[1], said
    assert len([m for m in said if "/nonexistent/lineside/notify" in m]) == 1, said  # said once, not per ping
