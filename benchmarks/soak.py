"""python -m benchmarks.soak --bundle DIR [--frames 10000]

Runs serve in-process on a generated video with faults injected on purpose:
the source drops every so often (and is reopened), some frames arrive corrupt,
the webhook peer goes down and comes back, and the explainer is slow. Reports
frames in against lines written (every frame must be accounted for: inspected,
or dropped as stale), errors, sink failures, thread crashes and RSS over time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from runtime.detect.detector import Detector
from runtime.serve import Server, ServeSettings
from runtime.serve.sources import CaptureSource

from . import reporting


def make_video(path: Path, frames: int, seed: int = 0) -> Path:
    """An MJPG AVI of grey parts with a dark scratch on every fifth one."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for i in range(frames):
        image = np.clip(rng.normal(128, 8, (240, 320, 3)), 0, 255).astype(np.uint8)
        if i % 5 == 4:
            cv2.line(image, (60, 80), (250, 120 + i % 40), (25, 25, 25), 4)
        writer.write(image)
    writer.release()
    return path


class FlakyVideo(CaptureSource):
    """A video that behaves like a camera: it stops delivering every `drop_every` frames
    (and must be reopened, resuming where it was) and hands over a corrupt frame every
    `corrupt_every` frames."""

    def __init__(self, path: Path, drop_every: int, corrupt_every: int):
        super().__init__(str(path), str(path), live=True)
        self.drop_every, self.corrupt_every, self.position, self.served = drop_every, corrupt_every, 0, 0
        self.drops = 0
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
            return True, image[:, :, :2], "injected corrupt frame (two channels)"
        return True, image, ""


class SlowAgent:
    """An explainer that takes its time, as a large model on a small box would."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def explain(self, result, image, reference=None, deadline_s: float = 10.0) -> str:
        time.sleep(min(self.seconds, deadline_s))
        return f"slow explanation of a {result.category}"


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(bundle: Path, frames: int, out: Path, category: str = "part") -> dict:
    video = make_video(out / "soak.avi", frames)
    source = FlakyVideo(video, drop_every=max(25, frames // 8), corrupt_every=17)
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    port = hook.server_port
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    crashes = []
    threading.excepthook = lambda args: crashes.append(f"{args.thread.name}: {args.exc_value!r}")
    settings = ServeSettings(source=str(video), bundle=bundle, category=category, port=0, results=out / "results.jsonl",
                             sink=(f"http://127.0.0.1:{port}/hook",), reconnect_max_s=0.2, explain_seconds=2.0,
                             teach=3, max_fps=25.0)  # fmt: skip
    detector = Detector.from_bundle(bundle, text_cache_dir=out / "text")
    server = Server(settings, detector=detector, agent=SlowAgent(1.5), source=source).start()
    rss, started, hook_down = [], time.time(), False
    while not source.ended.is_set():
        rss.append((round(time.time() - started, 1), round(rss_mb(), 1)))
        done = server.counters()["captured"] / frames
        if 0.3 < done < 0.6 and not hook_down:  # the peer goes away for a while
            hook.shutdown()
            hook.server_close()
            hook_down = True
        if done >= 0.6 and hook_down and hook.socket.fileno() == -1:
            hook = ThreadingHTTPServer(("127.0.0.1", port), Hook)
            threading.Thread(target=hook.serve_forever, daemon=True).start()
        time.sleep(0.25)
    time.sleep(1.0)
    server.shutdown()
    hook.shutdown()
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    counters = server.counters()
    value = server.metrics.registry.get_sample_value
    by_label = {k: sum(x["label"] == k for x in lines) for k in ("OK", "NG", "ERROR", "TEACH", "EXPLANATION")}
    frame_lines = by_label["OK"] + by_label["NG"] + by_label["ERROR"] + by_label["TEACH"]
    return {
        "frames_in_video": frames,
        "captured": counters["captured"],
        "result_lines": frame_lines,
        "dropped_stale": counters["dropped"],
        "accounted": frame_lines + counters["dropped"] == counters["captured"],
        "labels": by_label,
        "source_drops_injected": source.drops,
        "reconnects": int(value("lineside_source_reconnects_total") or 0),
        "sink_failures": int(value("lineside_sink_failures_total", {"sink": settings.sink[0]}) or 0),
        "explanations_skipped": int(value("lineside_explanations_skipped_total") or 0),
        "crashes": crashes,
        "seconds": round(time.time() - started, 1),
        "rss_mb": {"start": rss[0][1] if rss else None, "max": max(r for _, r in rss) if rss else None,
                   "end": rss[-1][1] if rss else None, "samples": rss[:: max(1, len(rss) // 40)]},  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=300, help="video length; read like a 25 fps camera")
    ap.add_argument("--category", default="part")
    ap.add_argument("--out", type=Path, help="report folder (default benchmarks/reports/soak)")
    args = ap.parse_args(argv)
    out = args.out or reporting.REPORTS / "soak"
    with tempfile.TemporaryDirectory() as work:
        figures = soak(args.bundle, args.frames, Path(work), args.category)
    figures["machine"] = reporting.machine()
    rows = [{"figure": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
            for k, v in figures.items() if k not in ("machine", "rss_mb")]  # fmt: skip
    rows.append({"figure": "rss_mb start/max/end", "value": f"{figures['rss_mb']['start']} / "
                 f"{figures['rss_mb']['max']} / {figures['rss_mb']['end']}"})  # fmt: skip
    md = f"# Soak: {args.frames} frames\n\n" + reporting.table(rows, ["figure", "value"]) + "\n"
    reporting.publish(out, "soak", figures, md)
    return 0 if figures["accounted"] and not figures["crashes"] else 1


if __name__ == "__main__":
    sys.exit(main())
