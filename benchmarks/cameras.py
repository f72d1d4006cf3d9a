"""python -m benchmarks.cameras --bundle DIR [--cameras 1,2,3,4] [--frames 20] [--seconds 10] [--repeats 3] [--processes] [--triton]

Throughput of one serve process against the number of cameras it serves
(issue 17 item 5). For each N, N cameras are listed in a cameras file, each
reading its own folder of generated parts (folder sources wait for the
inspector, so every frame is inspected and none is dropped), all sharing the
one detector the process loaded: one set of onnxruntime sessions. The figures
are frames inspected per second, in total and per camera, while all N cameras
ran (from the frames' capture times), and the process's resident memory after
each run beside what the detector's sessions took when they were built. With
`--processes`, the same N cameras are also served the old way, by N separate
serve processes each loading the bundle and building its own sessions, for
their throughput (measured the same way) and their resident memory summed.
With `--triton`, the N cameras are served by one process whose graphs run on
one tritonserver (`--providers triton://`, issue 28): the bundle exported with
`lineside export triton` (dynamic batching), on the server nvidia-pytriton's
wheel carries. That wheel has Triton's Python backend only, so each model runs
its ONNX graph through onnxruntime inside a Python stub (benchmarks/
tritonserver.py): on a CPU this measures the protocol and the batching, not the
onnxruntime or TensorRT backend a GPU server would run. Its memory is the
serve process's plus the server's and its stubs'. Every row gives the p50 and
p99 of the detector's time per frame (`timings_ms.total` of the lines).
All configurations run one after another, on the same machine state.

The committed report ran on a 2-core machine shared with other work:

    python -m export all --profile tiny --out /tmp/tiny
    nice -n 10 python -m benchmarks.cameras --bundle /tmp/tiny --processes --seconds 6
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import yaml

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings

from . import reporting

SIDE = 320  # pixels of a generated part image


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process (this one), MB (Linux /proc)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def parts(folder: Path, count: int, seed: int) -> Path:
    """`count` grey parts with texture noise, every fifth with a dark scratch, as PNG files."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = np.clip(rng.normal(128, 6, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        if i % 5 == 4:
            x, y = rng.integers(40, SIDE - 80, 2)
            cv2.line(image, (int(x), int(y)), (int(x) + 50, int(y) + 20), (30, 30, 30), 3)
        cv2.imwrite(str(folder / f"part-{i:04d}.png"), image)
    return folder


def lines_of(paths: list[Path]) -> list[dict]:
    """The complete lines of results logs still being written (a last line without its newline is not yet)."""
    return [json.loads(x) for p in paths if p.exists() for x in p.read_text().split("\n")[:-1] if x.strip()]


def measure(how: str, n: int, results: list[Path], seconds: float, running) -> dict:
    """Once every camera has its first line, frames whose capture falls in the next `seconds` (after a
    second to settle): frames per second with all N cameras running (`running()`: none has died)."""
    deadline = time.monotonic() + 300
    while len({x["source"] for x in lines_of(results)}) < n:
        if not running() or time.monotonic() > deadline:
            raise RuntimeError(f"{how}, {n} cameras: not every camera started")
        time.sleep(0.1)
    start = time.time() + 1.0
    time.sleep(1.0 + seconds)
    if not running():
        raise RuntimeError(f"{how}, {n} cameras: a camera stopped during the measurement")
    inside = [x for x in lines_of(results) if start <= x["time"] < start + seconds]
    fps = len(inside) / seconds
    per = [sum(x["source"] == s for x in inside) / seconds for s in sorted({x["source"] for x in inside})]
    return {
        "how": how,
        "cameras": n,
        "fps_total": round(fps, 1),
        "fps_per_camera": round(fps / n, 1),
        "slowest_camera_fps": round(min(per), 1) if len(per) == n else 0.0,
        "ms_per_frame": round(1000 / fps, 1) if fps else float("nan"),
        "p50_ms": _quantile(inside, 0.5),
        "p99_ms": _quantile(inside, 0.99),
        "errors": sum(x["label"] == "ERROR" for x in inside),
    }


def _quantile(lines: list[dict], q: float) -> float:
    """The q-quantile of the detector's time per frame in these lines (NaN when none carries one)."""
    times = [x["timings_ms"]["total"] for x in lines if (x.get("timings_ms") or {}).get("total") is not None]
    return round(float(np.quantile(times, q)), 1) if times else float("nan")


def together(
    n: int,
    root: Path,
    frames: int,
    seconds: float,
    detector: Detector,
    base: dict,
    how: str = "one process",
    extra_rss=None,
) -> dict:
    """N cameras (folders read in a loop) in one process around one detector; `extra_rss()`: the memory of
    what else serves them (the Triton server), added to this process's."""
    cameras = [{"id": f"cam{k}", "source": str(parts(root / f"n{n}" / f"cam{k}", frames, k))} for k in range(n)]
    path = root / f"cameras-{n}.yaml"
    path.write_text(yaml.safe_dump({"cameras": cameras}))
    results = root / f"results-{n}.jsonl"
    server = Server(Settings.of(**base, cameras=path, results=results, loop=True), detector=detector).start()
    try:
        row = measure(how, n, [results], seconds, lambda: not server.problems())
        row["rss_mb"] = round(rss_mb() + (extra_rss() if extra_rss else 0.0), 1)
    finally:
        server.shutdown()
    return row


def separate(n: int, root: Path, frames: int, seconds: float, base: dict) -> dict:
    """The same N cameras as N serve processes, each loading the bundle and building its own sessions."""
    folder = root / f"p{n}"
    procs, results = [], []
    for k in range(n):
        results.append(folder / f"results-{k}.jsonl")
        source = parts(folder / f"cam{k}", frames, k)
        argv = ["--source", str(source), "--results", str(results[-1]), "--no-explain", "--port", "0", "--loop"]
        argv += ["--bundle", str(base["bundle"]), "--category", base["category"]]
        argv += ["--references", str(base["references"])] if base.get("references") else []
        with open(folder / f"serve-{k}.log", "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "runtime.serve", *argv], stdout=out, stderr=out))
    try:
        row = measure("separate processes", n, results, seconds, lambda: all(p.poll() is None for p in procs))
        row["rss_mb"] = round(sum(rss_mb(p.pid) for p in procs), 1)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    return row


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and every process below it (tritonserver and its Python stubs), MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
        except OSError:
            continue
        todo += children.get(p, [])
    return total


def triton(bundle: Path, root: Path):
    """A tritonserver serving the bundle's repository (fp32, dynamic batching of up to 8 frames), started."""
    from runtime.bundle.loader import Bundle
    from runtime.bundle.triton_repo import RepoOptions, write_repository

    from .tritonserver import TritonServer, python_twin

    repo = root / "triton-repo"
    write_repository(Bundle.open(bundle), repo, RepoOptions(max_batch_size=8, queue_delay_us=2000), precisions=["fp32"])
    server = TritonServer([python_twin(repo, root / "triton-twin")], root / "triton-server")
    server.start()
    return server


def best(rows: list[dict]) -> dict:
    """The run with the highest total throughput (what the box can do when it is not busy with other
    work), with every run's figure beside it."""
    top = max(rows, key=lambda r: r["fps_total"])
    return top | {"fps_total_runs": [r["fps_total"] for r in rows]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cameras", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--category", default="metal part")
    ap.add_argument("--cameras", default="1,2,3,4", help="numbers of cameras to measure, comma-separated")
    ap.add_argument("--frames", type=int, default=20, help="images in each camera's folder (read in a loop)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window with every camera running")
    ap.add_argument("--processes", action="store_true", help="also serve the N cameras as N processes")
    ap.add_argument("--triton", action="store_true", help="also serve the N cameras through one tritonserver")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the best is reported")
    ap.add_argument("--out", type=Path, default=reporting.REPORTS / "cameras")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.cameras.split(",")]
    before = rss_mb()
    detector = Detector.from_bundle(args.bundle)
    loaded = rss_mb()
    with tempfile.TemporaryDirectory(prefix="lineside-cameras-") as tmp:
        root = Path(tmp)
        references = parts(root / "good", 4, 99) if not detector.has_language else None
        base = dict(bundle=args.bundle, category=args.category, port=0, explain=False)
        base |= {"references": references} if references else {}
        together(1, root / "warm", 4, 2.0, detector, base)  # sessions warmed, caches filled: not measured
        server = remote = None
        if args.triton:
            server = triton(args.bundle, root)
            url = server.url("grpc")
            remote = Detector.from_bundle(args.bundle, providers=(url,), precision="fp32")
            served = base | {"providers": (url,), "precision": "fp32"}
            together(1, root / "warm-triton", 4, 2.0, remote, served, "one process, Triton")
        runs: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.repeats):  # interleaved, so that a burst of other work spoils one run of each, not all
            for n in counts:
                row = together(n, root / f"r{r}", args.frames, args.seconds, detector, base)
                runs.setdefault((row["how"], n), []).append(row)
                if args.processes:
                    row = separate(n, root / f"r{r}", args.frames, args.seconds, base)
                    runs.setdefault((row["how"], n), []).append(row)
                if remote is not None:
                    server_rss = partial(tree_rss_mb, server.proc.pid)
                    row = together(
                        n,
                        root / f"t{r}",
                        args.frames,
                        args.seconds,
                        remote,
                        served,
                        "one process, Triton",
                        server_rss,
                    )
                    runs.setdefault((row["how"], n), []).append(row)
        if server is not None:
            server.stop()
    rows = [best(found) for found in runs.values()]
    data = {
        "bundle": str(args.bundle),
        "bundle_id": detector.bundle_id,
        "profile": detector.bundle.manifest.profile if detector.bundle else "",
        "images_per_camera": args.frames,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "image_side": SIDE,
        "detector_rss_mb": round(loaded - before, 1),
        "rows": rows,
    }
    columns = ["how", "cameras", "fps_total", "fps_per_camera", "slowest_camera_fps", "ms_per_frame", "p50_ms"]
    columns += ["p99_ms", "rss_mb"]
    columns += ["fps_total_runs"]
    markdown = (
        f"# Cameras: one process, N cameras, bundle `{detector.bundle_id}` ({data['profile']})\n\n"
        f"Each camera reads its own folder of {args.frames} generated parts ({SIDE}x{SIDE} PNG) in a loop; "
        f"frames per second over {args.seconds:g} s with every camera running. One process: one shared detector "
        f"(its sessions took {data['detector_rss_mb']} MB when built); separate processes: one serve process per "
        f"camera, each with its own. The best of {args.repeats} interleaved runs (all in fps_total_runs). "
        "rss_mb: resident memory at the end of the window (separate: summed; Triton: serve's plus the server's "
        "and its stubs'). p50_ms, p99_ms: the detector's time per frame. Triton here is nvidia-pytriton's "
        "server with its Python backend running onnxruntime on this CPU: the protocol and batching, not a GPU "
        "server's backend.\n\n" + reporting.table(rows, columns) + "\n"
    )
    reporting.publish(args.out, "cameras", data, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
