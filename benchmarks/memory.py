"""python -m benchmarks.memory --bundle DIR [--bundle DIR2 ...] [--frames 20] [--warm-up 3] [--precision fp32]

Peak memory of a real serve, per bundle, against the graph files it runs (issue 26, item 4).

For each bundle a child process runs `python -m runtime.serve` over a folder of a few generated
frames (looped, the first two taught as good references, --no-explain: the language model is not
loaded and not counted). After `--warm-up` frames its resident set (VmRSS) is read; after
`--frames` more, its peak (VmHWM, the most it ever held, start-up included) and which graph and
precision each part runs (/api/status). The graph bytes are the sizes of exactly those files, the
onnx graph and its external-data file when it has one, so the ratio peak / graph bytes says how
much serve holds besides its weights. The baseline is an interpreter that has imported serve and
onnxruntime and loaded nothing, which the peak minus baseline is measured against: a weight held
twice shows up as (peak - baseline) above twice the graph bytes.

The report, with the onnxruntime session options that decide memory, goes to
benchmarks/reports/memory/memory.{json,md}, the machine named.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from runtime.bundle.loader import Bundle
from runtime.bundle.sessions import memory_options

from . import reporting

ROOT = Path(__file__).resolve().parents[1]
OUT = reporting.REPORTS / "memory"
TEACH = 2  # frames taught as good references first: a few-shot bundle (no text encoder) needs them
PORT_LINE = re.compile(r"serving on http://([^:\s]+):(\d+)")
MB = 1 << 20


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS (resident now) of a live process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024  # the kernel writes kB
    return out


def make_frames(folder: Path, n: int = 4) -> Path:
    """`n` grey 640x480 parts with a little noise, the last one with a dark scratch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = np.clip(rng.normal(128, 6, (480, 640, 3)), 0, 255).astype(np.uint8)
        cv2.rectangle(frame, (160, 120), (480, 360), (150, 150, 150), -1)
        if i == n - 1:
            cv2.line(frame, (200, 200), (420, 300), (30, 30, 30), 4)
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    return folder


def graph_files(bundle: Bundle, graphs: dict[str, dict]) -> list[dict]:
    """The files of the graphs serve runs, at the precision each runs: the onnx graph and its external data."""
    rows = []
    for name, graph in graphs.items():
        component, precision = bundle.component(name), graph["precision"]
        for entry in (component.files[precision], component.assets.get(f"{precision}.data")):
            if entry is not None:
                size = bundle.file_path(entry, name).stat().st_size
                rows.append({"graph": name, "precision": precision, "path": entry.path, "bytes": size})
    return rows


def baseline_rss() -> int:
    """Peak RSS of an interpreter that has imported serve and onnxruntime and loaded no graph."""
    code = (
        "import runtime.serve.__main__, onnxruntime, pathlib; "
        "print(next(l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')))"
    )
    line = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return int(line.split()[1]) * 1024


def serve_command(bundle: Path, source: Path, results: Path, precision: str, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "runtime.serve",
        "--bundle",
        str(bundle),
        "--source",
        str(source),
        "--loop",
        "--category",
        "part",
        "--teach",
        str(TEACH),
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--no-explain",
        "--precision",
        precision,
        "--precision-cache-dir",
        str(cache),
        "--results",
        str(results),
    ]


class Child:
    """serve in a child process: its port from its stdout, its inspected frames from its results log."""

    def __init__(self, command: list[str], results: Path):
        self.command, self.results = command, results
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port: int | None = None
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            if self.port is None and (found := PORT_LINE.search(line)):
                self.port = int(found.group(2))

    def inspected(self) -> int:
        return len(self.results.read_text().splitlines()) if self.results.exists() else 0

    def wait_for(self, frames: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.inspected() < frames or self.port is None:
            if self.process.poll() is not None:
                tail = "\n".join(self.output[-15:])
                raise RuntimeError(f"serve exited with {self.process.returncode} before {frames} frames:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"serve inspected {self.inspected()} of {frames} frames in {timeout:.0f} s")
            time.sleep(0.05)

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def measure(bundle: Path, frames: int = 20, warm_up: int = 3, precision: str = "fp32", timeout: float = 300.0) -> dict:
    """One serve on `bundle`: RSS after `warm_up` inspected frames, peak after `frames` more, graph bytes."""
    opened = Bundle.open(bundle)
    with tempfile.TemporaryDirectory(prefix="lineside-memory-") as work:
        work = Path(work)
        command = serve_command(bundle, make_frames(work / "frames"), work / "results.jsonl", precision, work / "cache")
        child = Child(command, work / "results.jsonl")
        try:
            child.wait_for(warm_up, timeout)
            after_warm_up = proc_status(child.process.pid)["VmRSS"]
            child.wait_for(warm_up + frames, timeout)
            status = proc_status(child.process.pid)
            graphs = child.status()["graphs"]
            inspected = child.inspected()
        finally:
            child.stop()
    files = graph_files(opened, graphs)
    graph_bytes = sum(f["bytes"] for f in files)
    peak = status["VmHWM"]
    return {
        "bundle": str(bundle),
        "profile": opened.manifest.profile,
        "bundle_id": opened.bundle_id,
        "random_weights": reporting.random_weights(opened),
        "precision": precision,
        "graphs": {name: g["precision"] for name, g in graphs.items()},
        "graph_files": files,
        "graph_bytes": graph_bytes,
        "peak_rss_bytes": peak,
        "rss_after_warm_up_bytes": after_warm_up,
        "rss_at_end_bytes": status["VmRSS"],
        "peak_over_graph_bytes": peak / graph_bytes,
        "frames_inspected": inspected,
        "warm_up_frames": warm_up,
        "command": shlex.join(command),
    }


def markdown(rows: list[dict], baseline: int, options: dict, invocation: str) -> str:
    def mb(value: int) -> str:
        return f"{value / MB:.1f}"

    table = [
        {
            "bundle": r["bundle"],
            "graphs (precision)": ", ".join(f"{n} ({p})" for n, p in r["graphs"].items()),
            "graph MB": mb(r["graph_bytes"]),
            "peak RSS MB": mb(r["peak_rss_bytes"]),
            "RSS after warm-up MB": mb(r["rss_after_warm_up_bytes"]),
            "peak / graph bytes": f"{r['peak_over_graph_bytes']:.1f}",
            "(peak - baseline) / graph bytes": f"{(r['peak_rss_bytes'] - baseline) / r['graph_bytes']:.2f}",
            "frames": r["frames_inspected"],
        }
        for r in rows
    ]
    files = [f | {"bundle": r["bundle"]} for r in rows for f in r["graph_files"]]
    random = [r["bundle"] for r in rows if r["random_weights"]]
    return "\n".join(
        [
            "# Memory: peak RSS of serve against its graph files",
            "",
            f"    {invocation}",
            "",
            "Each bundle served by `python -m runtime.serve` in a child process over 4 generated frames, looped, "
            f"{TEACH} taught as references, `--no-explain` (no language model loaded, none counted). Peak RSS is "
            "the child's VmHWM (start-up and the precision check included), RSS after warm-up its VmRSS after the "
            f"warm-up frames. Baseline: an interpreter with serve and onnxruntime imported, no graph loaded: "
            f"{mb(baseline)} MB. Graph bytes: the files of the graphs and precisions serve reported running.",
            "",
            reporting.table(table, list(table[0])),
            "",
            "Graph files counted:",
            "",
            reporting.table(files, ["bundle", "graph", "precision", "path", "bytes"]),
            "",
            "onnxruntime session options that decide memory (runtime/bundle/sessions.py): "
            + ", ".join(f"{k} {v}" for k, v in options.items())
            + ".",
            *(["", f"Random weights (sizes real, values not): {', '.join(random)}."] if random else []),
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[2])
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle folder; repeatable")
    parser.add_argument("--frames", type=int, default=20, help="frames inspected after warm-up")
    parser.add_argument("--warm-up", type=int, default=3, help="frames inspected before RSS after warm-up is read")
    parser.add_argument("--precision", default="fp32", help="serve's --precision (fp32, fp16, int8, auto)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = [measure(b, args.frames, args.warm_up, args.precision) for b in args.bundle]
    baseline, options = baseline_rss(), memory_options()
    invocation = "python -m benchmarks.memory " + shlex.join(
        [*(x for b in args.bundle for x in ("--bundle", str(b))), "--frames", str(args.frames)]
        + ["--warm-up", str(args.warm_up), "--precision", args.precision]
    )
    data = {"bundles": rows, "baseline_rss_bytes": baseline, "session_options": options, "invocation": invocation}
    reporting.publish(args.out, "memory", data, markdown(rows, baseline, options, invocation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
