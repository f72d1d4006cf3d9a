"""python -m benchmarks.soak --bundle DIR [--frames 10000] [--max-fps 8]

Runs serve in-process on a generated video for a long while with faults
injected on purpose (issue 10's soak):

- the source drops every so often and is reopened (a camera that goes away),
- some frames arrive corrupt (two channels, undecodable, a few pixels),
- the webhook peer goes down for a stretch and comes back,
- a real mosquitto broker behind the MQTT sink is killed (SIGKILL) mid-run and
  started again on the same port; a real paho subscriber counts what it got,
- the explainer is slow: the bundle's own language model (PromptAgent) when the
  bundle has one, with extra injected latency; otherwise a stand-in that sleeps.

It reports frames captured against result lines written (lost = captured -
frame lines - frames dropped as stale, which must be 0), crashes (thread
exceptions and `server.failure()`), per-sink written / delivered (counted at
the real peer) / failed / dropped, explanations written and skipped, and RSS
over the run with its drift after warm-up, each criterion marked pass or fail,
in benchmarks/reports/soak/soak.{json,md}.

The committed report ran on the tiny profile with the packaged language model,
on a 2-core machine shared with other work:

    python -m export all --profile tiny --out /tmp/soak-bundle
    python -m export mllm --packaged --out /tmp/soak-bundle
    nice -n 10 python -m benchmarks.soak --bundle /tmp/soak-bundle --frames 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from runtime.bundle.manifest import Manifest
from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.sources import CaptureSource

from . import reporting

TOPIC = "line/results"
DRIFT_BOUND = 0.05  # RSS drift after warm-up must stay under 5 %
WARM = (0.10, 0.20)  # the samples right after warm-up: 10 %..20 % of the run
LAST = 0.10  # against the last 10 % of the run


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


def soak(
    bundle: Path,
    frames: int,
    out: Path,
    category: str = "part",
    max_fps: float = 8.0,
    broker_down_s: float = 20.0,
    llm_delay_s: float = 1.0,
    sam_gate: float = 0.7,
    sample_s: float = 0.25,
) -> dict:
    """Run the soak; every figure of the report in one dict (`criteria` says pass/fail)."""
    out.mkdir(parents=True, exist_ok=True)
    video = make_video(out / "soak.avi", frames)
    source = FlakyVideo(video, drop_every=max(25, frames // 20), corrupt_every=17)
    broker = Broker(out / "broker")
    crashes: list[str] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: crashes.append(
        f"{args.thread.name if args.thread else '?'}: {args.exc_value!r}"
    )
    subscriber = hook = None
    try:
        broker.start()
        mqtt_tally, hook_tally = Tally(frames), Tally(frames)
        subscriber = Subscriber(broker.port, mqtt_tally)
        hook_port = free_port()
        hook = [webhook(hook_port, hook_tally)]  # a box: the outage replaces the server
        mqtt_spec, hook_spec = f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", f"http://127.0.0.1:{hook_port}/hook"
        settings = Settings.of(
            source=str(video),
            bundle=bundle,
            category=category,
            port=0,
            results=out / "results.jsonl",
            sink=(mqtt_spec, hook_spec),
            reconnect_max_s=0.2,
            explain_seconds=10.0,
            teach=3,
            max_fps=max_fps,
            sam_gate=sam_gate,
            text_cache_dir=out / "text",
            llm_threads=1,
        )
        # SAM refines only frames whose score or map reaches sam_gate (on the tiny bundle with three taught
        # references: the scratched frames); one llama.cpp thread leaves the other core to inspection.
        detector = Detector.from_bundle(bundle, text_cache_dir=out / "text", sam_gate=sam_gate)
        agent, explainer = _explainer(bundle, detector, settings, llm_delay_s)
        server = Server(settings, detector=detector, agent=agent, source=source)
        events, samples, failures, seconds = _run(
            server, source, frames, max_fps, broker, broker_down_s, hook, hook_port, hook_tally, mqtt_tally, sample_s
        )
        # The broker delivers what serve handed over before shutdown; wait until nothing more comes.
        deadline = time.monotonic() + 30
        while mqtt_tally.unique < server.counters()["inspected"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        if subscriber is not None:
            subscriber.close()
        if hook is not None:
            hook[0].shutdown()
            hook[0].server_close()
        broker.stop()
        threading.excepthook = previous_hook
    sinks = {"mqtt": (mqtt_spec, mqtt_tally), "webhook": (hook_spec, hook_tally)}
    return _figures(
        server,
        source,
        settings,
        frames,
        out / "results.jsonl",
        sinks,
        broker,
        events,
        samples,
        crashes,
        failures,
        seconds,
        agent,
        explainer,
        sample_s,
    )


def _explainer(bundle: Path, detector: Detector, settings: Settings, delay: float):
    """(agent, what it is): the bundle's language model slowed down, or the stand-in that sleeps."""
    manifest = Manifest.read(bundle)
    if "mllm" not in manifest.components:
        return Slowed(SlowAgent(delay), 0.0), (
            f"stand-in SlowAgent sleeping {delay} s per answer (the bundle has no language model)"
        )
    from runtime.serve.server import build_agent

    model = Path(next(iter(manifest.components["mllm"].files.values())).path).name
    return Slowed(build_agent(detector, settings.agent), delay), (
        f"the bundle's language model (mllm: {model}, llama.cpp, {settings.agent.llm_threads} thread) through "
        f"PromptAgent, plus {delay} s injected latency per answer"
    )


def _run(
    server: Server,
    source: FlakyVideo,
    frames: int,
    max_fps: float,
    broker: Broker,
    broker_down_s: float,
    hook: list,
    hook_port: int,
    hook_tally: Tally,
    mqtt_tally: Tally,
    sample_s: float,
):
    """Serve until the video has been read, faults on their schedule; (events, RSS samples, failures, seconds)."""
    events: dict[str, float | int | None] = {}
    samples: list[tuple[float, float, int]] = []
    failures: list[str] = []
    server.start()
    started = time.monotonic()
    limit = started + frames / max_fps * 2 + 300
    try:
        hook_down, killed_at = False, None
        while not source.ended.is_set() and time.monotonic() < limit:
            now = time.monotonic() - started
            counts = server.counters()
            samples.append((round(now, 2), round(rss_mb(), 1), counts["captured"]))
            problem = server.failure()
            if problem:
                failures.append(problem)
                break
            done = counts["captured"] / frames
            if done >= 0.25 and not hook_down and "hook_down_at" not in events:  # the webhook peer goes away ...
                hook[0].shutdown()
                hook[0].server_close()
                hook_down = True
                events.update(hook_down_at=round(now, 1), hook_down_inspected=counts["inspected"])
            if done >= 0.40 and hook_down:  # ... and comes back
                hook[0] = webhook(hook_port, hook_tally)
                hook_down = False
                events.update(hook_up_at=round(now, 1), hook_up_inspected=counts["inspected"])
            if done >= 0.55 and killed_at is None:  # the broker dies (SIGKILL) ...
                broker.kill()
                killed_at = time.monotonic()
                events.update(broker_killed_at=round(now, 1), broker_killed_inspected=counts["inspected"])
            if killed_at and not broker.up() and time.monotonic() - killed_at >= broker_down_s:
                _restart(broker, events, started, server, mqtt_tally)  # ... and comes back on the same port
            time.sleep(sample_s)
        if killed_at and not broker.up():  # a run too short for the whole outage: bring it back now
            _restart(broker, events, started, server, mqtt_tally)
        time.sleep(1.0)
    finally:
        server.shutdown()
        seconds = time.monotonic() - started
        problem = server.failure()
        if problem and problem not in failures:
            failures.append(problem)
    return events, samples, failures, seconds


def _restart(broker: Broker, events: dict, started: float, server: Server, tally: Tally) -> None:
    broker.start()
    events.update(
        broker_restarted_at=round(time.monotonic() - started, 1),
        broker_restarted_inspected=server.counters()["inspected"],
    )
    before, at = tally.received, time.monotonic()

    def first_delivery():
        """When the first record after the restart reaches the subscriber (serve's client reconnects by itself)."""
        deadline = at + 60
        while tally.received == before and time.monotonic() < deadline:
            time.sleep(0.05)
        if tally.received > before:
            events["mqtt_first_delivery_after_restart_s"] = round(tally.last - at, 2)

    threading.Thread(target=first_delivery, name="soak-watch-restart", daemon=True).start()


def _settings(settings: Settings) -> dict:
    """The settings that shape the soak, by flat name."""
    serve = ("max_fps", "teach", "reconnect_max_s", "sink_queue", "mqtt_queue", "explain_queue", "explain_seconds")
    picked = {k: getattr(settings.serve, k) for k in serve}
    picked.update({k: getattr(settings.detector, k) for k in ("precision", "sam_gate", "threshold")})
    return {**picked, "llm_threads": settings.agent.llm_threads}


def _figures(
    server: Server,
    source: FlakyVideo,
    settings: Settings,
    frames: int,
    results: Path,
    sink_peers: dict,
    broker: Broker,
    events: dict,
    samples: list,
    crashes: list,
    failures: list,
    seconds: float,
    agent: Slowed,
    explainer: str,
    sample_s: float,
) -> dict:
    lines = [json.loads(x) for x in results.read_text(encoding="utf-8").splitlines()]
    counters = server.counters()
    value = server.metrics.registry.get_sample_value
    by_label = {k: sum(x["label"] == k for x in lines) for k in ("OK", "NG", "ERROR", "TEACH", "EXPLANATION")}
    frame_lines = [x for x in lines if x["label"] != "EXPLANATION"]
    ids = [x["frame_id"] for x in frame_lines]
    written = {x["frame_id"] for x in frame_lines if x["label"] in ("OK", "NG", "ERROR")}  # what the sinks got offered
    lost = counters["captured"] - len(frame_lines) - counters["dropped"]
    sinks = {}
    for name, (spec, tally) in sink_peers.items():
        delivered = tally.ids()
        failed = int(value("lineside_sink_failures_total", {"sink": spec}) or 0)
        dropped = int(value("lineside_sink_drops_total", {"sink": spec}) or 0)
        missing = len(written - delivered)
        sinks[name] = {
            "sink": spec,
            "written": len(written),
            "delivered": len(delivered & written),
            "failed": failed,
            "dropped": dropped,
            "duplicates_received": tally.duplicates,
            "unexpected_received": tally.unexpected + len(delivered - written),
            "not_delivered": missing,
            # MQTT at QoS 1 must deliver all it did not drop at its bound; the webhook must count what it lost.
            "lost": missing - dropped if name == "mqtt" else missing - failed - dropped,
        }
    outage = None
    if events.get("broker_restarted_inspected") is not None and events.get("broker_killed_inspected") is not None:
        outage = events["broker_restarted_inspected"] - events["broker_killed_inspected"]
    ng = by_label["NG"]
    explained = int(value("lineside_explanations_total") or 0)
    skipped = int(value("lineside_explanations_skipped_total") or 0)
    agent_seconds = agent.seconds
    rss = drift(samples)
    reconnects = int(value("lineside_source_reconnects_total", {"camera": ""}) or 0)
    figures = {
        "frames_in_video": frames,
        "max_fps": settings.serve.max_fps,
        "settings": _settings(settings),
        "seconds": round(seconds, 1),
        "captured": counters["captured"],
        "capture_fps": round(counters["captured"] / seconds, 2),
        "result_lines": len(frame_lines),
        "dropped_stale": counters["dropped"],
        "lost": lost,
        "duplicate_frame_lines": len(ids) - len(set(ids)),
        "labels": by_label,
        "crashes": crashes,
        "server_failure": failures,
        "faults": {
            "source_drops_injected": source.drops,
            "reconnects": reconnects,
            "corrupt_frames_injected": dict(source.corrupt),
            "webhook_outage": {
                "down_at_s": events.get("hook_down_at"),
                "up_at_s": events.get("hook_up_at"),
                "records_during": (events["hook_up_inspected"] - events["hook_down_inspected"])
                if "hook_up_inspected" in events
                else None,
            },
            "broker_restart": {
                "killed_at_s": events.get("broker_killed_at"),
                "restarted_at_s": events.get("broker_restarted_at"),
                "kills": broker.kills,
                "starts": broker.starts,
                "records_during_outage": outage,
                "first_delivery_after_restart_s": events.get("mqtt_first_delivery_after_restart_s"),
                "mqtt_queue_bound": settings.serve.mqtt_queue,
                "broker": broker.version(),
            },
        },
        "sinks": sinks,
        "explanations": {
            "explainer": explainer,
            "ng_frames": ng,
            "explanation_lines": by_label["EXPLANATION"],
            "explained_metric": explained,
            "skipped": skipped,
            "failed": max(0, ng - by_label["EXPLANATION"]),  # a skipped NG frame has its line too (origin skipped)
            "answer_s_mean": round(float(np.mean(agent_seconds)), 2) if agent_seconds else None,
            "answer_s_max": round(float(np.max(agent_seconds)), 2) if agent_seconds else None,
            "bound_s": settings.serve.explain_seconds,
        },
        "rss": {
            **rss,
            "samples_taken": len(samples),
            "every_s": sample_s,
            "start_mb": samples[0][1] if samples else None,
            "max_mb": max(r for _, r, _ in samples) if samples else None,
            "end_mb": samples[-1][1] if samples else None,
            "samples": [list(s) for s in samples[:: max(1, len(samples) // 100)]],
        },
    }
    figures["criteria"] = {
        "0 lost result lines": {"value": lost, "pass": lost == 0 and figures["duplicate_frame_lines"] == 0},
        "0 crashes": {"value": len(crashes) + len(failures), "pass": not crashes and not failures},
        "0 MQTT records lost across the broker restart (QoS 1)": {
            "value": sinks["mqtt"]["lost"],
            "pass": sinks["mqtt"]["lost"] == 0 and broker.kills >= 1 and broker.starts >= 2,
        },
        "webhook records all delivered or counted": {
            "value": sinks["webhook"]["lost"],
            "pass": sinks["webhook"]["lost"] == 0,
        },
        "RSS drift after warm-up < 5%": {
            "value": rss["drift"],
            "pass": rss["drift"] is not None and rss["drift"] < DRIFT_BOUND,
        },
    }
    return figures


def machine() -> dict:
    """`reporting.machine()` (CPU model and ISA flags, GPUs, versions) with the peers' packages too."""
    described = reporting.machine()
    for name in ("paho-mqtt", "llama_cpp_python", "prometheus_client"):
        try:
            described["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {**described, "nice": os.nice(0)}


def describe_bundle(bundle: Path) -> dict:
    manifest = Manifest.read(bundle)
    return {
        "path": str(bundle),
        "bundle_id": manifest.bundle_id,
        "profile": manifest.profile,
        "components": sorted(manifest.components),
        "built_with": manifest.versions,
        "random_weights": any(c.source.get("random_init") for c in manifest.components.values()),
    }


def _show(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def markdown(figures: dict, command: str) -> str:
    f, criteria = figures, figures["criteria"]
    m, b, rss = f["machine"], f["bundle"], f["rss"]
    verdict = "PASS" if all(x["pass"] for x in criteria.values()) else "FAIL"
    flags = ", ".join(k for k, v in m["isa"].items() if v) or "none of " + ", ".join(m["isa"])
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    nice = f"; run at niceness {m['nice']}" if m.get("nice") else ""
    out = [f"# Soak: {f['frames_in_video']} frames, faults injected: {verdict}", ""]
    out += [
        f"`{command}`: {f['seconds']:.0f} s ({f['seconds'] / 60:.1f} min) at max_fps {f['max_fps']} "
        f"(captured {f['capture_fps']} frames/s), serve in-process on a generated 320x240 MJPG video read as a "
        "live camera: frames the inspector cannot keep up with are dropped as stale, and counted.",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in f["settings"].items()) + ".",
        "",
    ]
    rows = [
        {"criterion": k, "value": v["value"], "result": "pass" if v["pass"] else "FAIL"} for k, v in criteria.items()
    ]
    out += ["## Criteria", "", reporting.table(rows, ["criterion", "value", "result"]), ""]
    keys = (
        "captured",
        "result_lines",
        "dropped_stale",
        "lost",
        "duplicate_frame_lines",
        "labels",
        "crashes",
        "server_failure",
    )
    out += [
        "## Frames",
        "",
        reporting.table([{"figure": k, "value": _show(f[k])} for k in keys], ["figure", "value"]),
        "",
        "lost = captured - result lines (OK, NG, ERROR, TEACH) - dropped as stale; crashes: exceptions that "
        "ended a thread (threading.excepthook); server_failure: `server.failure()` during and after the run.",
        "",
    ]
    rows = [{"fault": k, "what happened": _show(v)} for k, v in f["faults"].items()]
    out += ["## Faults injected", "", reporting.table(rows, ["fault", "what happened"]), ""]
    columns = ["sink", "written", "delivered", "failed", "dropped", "duplicates_received", "not_delivered", "lost"]
    out += [
        "## Sinks",
        "",
        reporting.table([{**v, "sink": k} for k, v in f["sinks"].items()], columns),
        "",
        "written: OK/NG/ERROR records serve offered the sink; delivered: distinct records counted at the real "
        "peer (a paho QoS 1 subscriber with a persistent session on the broker; the webhook's HTTP server); "
        "failed, dropped: serve's lineside_sink_failures / lineside_sink_drops. MQTT lost = written - delivered "
        "- dropped at the mqtt_queue bound (at QoS 1 a failure is a loss); webhook lost = written - delivered - "
        "failed - dropped (its outage's records are re-sent; those past webhook_retries are failures, counted).",
        "",
    ]
    rows = [{"figure": k, "value": v} for k, v in f["explanations"].items()]
    out += [
        "## Explanations (slow language model)",
        "",
        reporting.table(rows, ["figure", "value"]),
        "",
        "Every NG frame gets one EXPLANATION line; those arriving while explain_queue is full get theirs at once, "
        "with origin skipped and the reason, and are counted (lineside_explanations_skipped); failed = NG frames "
        "without an EXPLANATION line.",
        "",
    ]
    drift_text = "n/a" if rss["drift"] is None else f"{rss['drift']:+.2%}"
    out += [
        "## Memory",
        "",
        f"RSS of the soak process (serve with its detector, sinks and language model; the MQTT subscriber and "
        f"webhook server), every {rss['every_s']} s, {rss['samples_taken']} samples: start {rss['start_mb']} MB, "
        f"max {rss['max_mb']} MB, end {rss['end_mb']} MB. Drift after warm-up = (mean of the last 10 % of the "
        f"samples, {rss['last_mb']} MB - mean of the samples at 10 %..20 % of the run, {rss['warm_mb']} MB) / "
        f"the latter = **{drift_text}** (bound: under 5 %).",
        "",
    ]
    every = max(1, len(rss["samples"]) // 20)
    rows = [{"t_s": t, "rss_mb": r, "captured": n} for t, r, n in rss["samples"][::every]]
    out += [reporting.table(rows, ["t_s", "rss_mb", "captured"]), ""]
    out += [
        "## Machine, bundle, versions",
        "",
        f"- CPU: {m['cpu']} ({m['arch']}, {m['cores']} cores usable{nice}); flags: {flags}; "
        f"onnxruntime {m['onnxruntime']}",
        f"- bundle {b['bundle_id']} (profile {b['profile']}; components {', '.join(b['components'])}"
        f"{'; random weights' if b['random_weights'] else ''})",
        f"- versions: python {m['python']}, {versions}; broker {f['faults']['broker_restart']['broker']}",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=10_000, help="video length (default 10000)")
    ap.add_argument("--max-fps", type=float, default=8.0, help="camera frame rate the video is read at (default 8)")
    ap.add_argument("--broker-down-s", type=float, default=20.0, help="how long the killed broker stays away")
    ap.add_argument("--llm-delay-s", type=float, default=1.0, help="injected latency per explanation")
    ap.add_argument("--sam-gate", type=float, default=0.7, help="SAM refines frames whose score or map reach this")
    ap.add_argument("--category", default="part")
    ap.add_argument("--out", type=Path, help="report folder (default benchmarks/reports/soak)")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.soak " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = args.out or reporting.REPORTS / "soak"
    with tempfile.TemporaryDirectory() as work:
        figures = soak(
            args.bundle,
            args.frames,
            Path(work),
            args.category,
            args.max_fps,
            args.broker_down_s,
            args.llm_delay_s,
            args.sam_gate,
        )
    figures["command"] = command
    figures["machine"], figures["bundle"] = machine(), describe_bundle(args.bundle)
    reporting.publish(out, "soak", figures, markdown(figures, command))
    return 0 if all(x["pass"] for x in figures["criteria"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
