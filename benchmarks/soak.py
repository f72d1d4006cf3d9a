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
in benchmarks/reports/soak/soak.{json,md}. This module runs it; the video and the faults are in
soak_faults.py, the counting peers and RSS in soak_measures.py, the figures and markdown in soak_report.py.

The committed report ran on the tiny profile with the packaged language model,
on a 2-core machine shared with other work:

    python -m export all --profile tiny --out /tmp/soak-bundle
    python -m export mllm --packaged --out /tmp/soak-bundle
    nice -n 10 python -m benchmarks.soak --bundle /tmp/soak-bundle --frames 10000
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from runtime.bundle.manifest import Manifest
from runtime.detect.detector import Detector
from runtime.serve import Server, Settings

from . import reporting
from .soak_faults import Broker, FlakyVideo, SlowAgent, Slowed, free_port, make_video
from .soak_measures import TOPIC, Subscriber, Tally, rss_mb, webhook
from .soak_report import describe_bundle, machine, markdown, soak_figures


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
    return soak_figures(
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
