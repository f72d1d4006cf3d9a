"""What the soak measures with: peers that count the records they receive (a paho subscriber, a
webhook server) in constant memory, and the process's RSS with its drift after warm-up."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

TOPIC = "line/results"
DRIFT_BOUND = 0.05  # RSS drift after warm-up must stay under 5 %
WARM = (0.10, 0.20)  # the samples right after warm-up: 10 %..20 % of the run
LAST = 0.10  # against the last 10 % of the run


class Tally:
    """Frame ids a peer received, in constant memory (one byte per frame id), with duplicates
    and the time of the last receipt."""

    def __init__(self, frames: int):
        self.seen, self.lock = bytearray(frames + 2), threading.Lock()
        self.unique = self.duplicates = self.received = self.unexpected = 0
        self.last = 0.0

    def add(self, payload: bytes) -> None:
        try:
            frame_id = int(json.loads(payload)["frame_id"])
        except (ValueError, KeyError, TypeError):
            frame_id = -1
        with self.lock:
            self.received += 1
            self.last = time.monotonic()
            if not 0 < frame_id < len(self.seen):
                self.unexpected += 1
            elif self.seen[frame_id]:
                self.duplicates += 1
            else:
                self.seen[frame_id] = 1
                self.unique += 1

    def ids(self) -> set[int]:
        with self.lock:
            return {i for i, v in enumerate(self.seen) if v}


class Subscriber:
    """A real paho subscriber at QoS 1 with a persistent session: it reconnects by itself
    after the broker returns and is sent what the broker kept for it."""

    def __init__(self, port: int, tally: Tally):
        import paho.mqtt.client as mqtt

        self.tally = tally
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-sub-{os.getpid()}", clean_session=False
        )
        self.client.on_message = lambda c, u, m: tally.add(m.payload)
        self.client.on_connect = lambda c, u, flags, rc, props=None: c.subscribe(f"{TOPIC}/+/+/result", qos=1)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # subscribed, and saved by the broker's one-second autosave

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def webhook(port: int, tally: Tally) -> ThreadingHTTPServer:
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            tally.add(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, name="soak-webhook", daemon=True).start()
    return server


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drift(samples: list[tuple[float, float, int]]) -> dict:
    """RSS drift after warm-up: (mean of the last 10 % of the samples - mean of the samples at
    10 %..20 % of the run) / that warm-up mean."""
    n = len(samples)
    warm = [r for _, r, _ in samples[int(n * WARM[0]) : max(int(n * WARM[0]) + 1, int(n * WARM[1]))]]
    last = [r for _, r, _ in samples[min(n - 1, int(n * (1 - LAST))) :]]
    if not warm or not last:
        return {"warm_mb": None, "last_mb": None, "drift": None}
    w, t = float(np.mean(warm)), float(np.mean(last))
    return {
        "warm_mb": round(w, 1),
        "last_mb": round(t, 1),
        "drift": round((t - w) / w, 4),
        "warm_window": f"samples {int(n * WARM[0])}..{max(int(n * WARM[0]) + 1, int(n * WARM[1]))} of {n}",
        "last_window": f"samples {min(n - 1, int(n * (1 - LAST)))}..{n} of {n}",
    }
