"""The soak's workload and the faults it injects: a generated video read as a flaky camera (drops and
corrupt frames), a slow explainer, and a real mosquitto that can be killed and started again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.serve.frames.sources import CaptureSource


def make_video(path: Path, frames: int, seed: int = 0) -> Path:
    """An MJPG AVI of one grey part under sensor noise, with a dark scratch on every fifth frame."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    base = np.clip(rng.normal(128, 8, (240, 320, 3)), 0, 255).astype(np.int16)
    for i in range(frames):
        image = np.clip(base + rng.integers(-4, 5, base.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        if i % 5 == 4:
            cv2.line(image, (60, 80), (250, 120 + i % 40), (25, 25, 25), 4)
        writer.write(image)
    writer.release()
    return path


class FlakyVideo(CaptureSource):
    """A video that behaves like a camera: it stops delivering every `drop_every` frames
    (and must be reopened, resuming where it was) and hands over a corrupt frame every
    `corrupt_every` frames, of three kinds in turn: two channels, undecodable (no
    image), and a few pixels wide."""

    CORRUPT = ("two channels", "undecodable", "4x4 pixels")

    def __init__(self, path: Path, drop_every: int, corrupt_every: int):
        super().__init__(str(path), str(path), live=True)
        self.drop_every, self.corrupt_every, self.position, self.served = drop_every, corrupt_every, 0, 0
        self.drops, self.corrupt = 0, dict.fromkeys(self.CORRUPT, 0)
        self.ended = threading.Event()

    def open(self) -> None:
        super().open()
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, self.position)

    def read(self):
        ok, image, note = super().read()
        if not ok:
            self.ended.set()
            return False, None, note
        self.position += 1
        self.served += 1
        if self.served % self.drop_every == 0:
            self.drops += 1
            return False, None, "injected drop"
        if self.served % self.corrupt_every == 0:
            kind = self.CORRUPT[(self.served // self.corrupt_every) % len(self.CORRUPT)]
            self.corrupt[kind] += 1
            if kind == "two channels":
                return True, image[:, :, :2], "injected corrupt frame (two channels)"
            if kind == "undecodable":
                return True, None, "injected corrupt frame (undecodable)"
            return True, image[:4, :4], "injected corrupt frame (4x4 pixels)"
        return True, image, ""


class SlowAgent:
    """Stand-in explainer for bundles without a language model: it takes its time."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def explain(self, result, image, reference=None, deadline_s: float = 10.0) -> str:
        time.sleep(min(self.seconds, deadline_s))
        return f"slow explanation of a {result.category}"


class Slowed:
    """The real prompt agent (the bundle's language model) with `delay` seconds of injected
    latency before each answer, as a larger model on a busier box would take; times each call."""

    def __init__(self, agent, delay: float):
        self.agent, self.delay, self.seconds = agent, delay, []

    def explain(self, result, image, reference=None, deadline_s: float = 10.0) -> str:
        started = time.perf_counter()
        time.sleep(min(self.delay, deadline_s / 2))
        try:
            return self.agent.explain(result, image, reference, deadline_s=deadline_s - (time.perf_counter() - started))
        finally:
            self.seconds.append(time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real mosquitto on a fixed port that can be killed (SIGKILL) and started again on that port.

    Sessions are persisted (saved every second), so the subscriber's persistent session and
    its subscription survive the kill, as on a line's broker with persistence on.
    """

    def __init__(self, folder: Path):
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.exe).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.port, self.proc, self.starts, self.kills = free_port(), None, 0, 0
        folder.mkdir(parents=True, exist_ok=True)
        stay = "user root\n" if os.geteuid() == 0 else ""  # as root it would drop to a user who cannot save here
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\n{stay}"
        )

    def version(self) -> str:
        out = subprocess.run([self.exe, "-h"], capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    self.starts += 1
                    return
            if self.proc.poll() is not None:  # the port not free yet: try again
                time.sleep(0.2)
                self.proc = subprocess.Popen(
                    [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.up():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
