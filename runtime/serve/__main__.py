"""python -m runtime.serve --camera 0 [--bundle DIR] [--category NAME] ... (--help lists all)

Exit status: 0 when the sources ended or serve was asked to stop, 1 when a
worker died (of any camera) or the results log could not be written (a supervisor should
restart it), 2 when it refused to start (bad settings, busy port).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys

import cv2
import numpy as np

from ..bundle.manifest import BundleError
from ..options import add_arguments, load
from .process import descriptors, logs, notify
from .server import Server

log = logging.getLogger("lineside.serve")

# What a bad setting, config file, bundle or path can raise while serve is built: one line each, no traceback.
START_ERRORS = (BundleError, ValueError, OSError, RuntimeError)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--camera", help="camera index (same as --source N)")
    add_arguments(ap, "job", "serve", "detector", "agent")
    return ap


def show(server: Server) -> None:
    """The overlay in a window until q or the end; needs OpenCV with a GUI backend."""
    seen = -1
    while not server.stop.is_set() and not server.finished():
        seen, jpeg = server.state.next_jpeg(seen, 0.2)
        if jpeg is not None:
            cv2.imshow("lineside", cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        if cv2.waitKey(1) & 0xFF == ord("q"):
            break


def build(args: argparse.Namespace) -> Server:
    """Settings from defaults, --config, LINESIDE_* and flags, then the server; raises one of START_ERRORS."""
    settings = load(args)
    if args.camera is not None:
        settings = settings.replace(source=args.camera)
    if settings.serve.show and re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        raise ValueError("--show needs OpenCV with a GUI (pip install opencv-python instead of -headless)")
    return Server(settings)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    early = args.log_format or os.environ.get("LINESIDE_LOG_FORMAT", "text")  # until the settings are read
    logs.setup(early if early in ("text", "json") else "text")
    descriptors.raise_limit()  # a shell's soft 1,024 open files is a default, not a decision (descriptors.py)
    try:
        server = build(args)
    except START_ERRORS as e:
        print(f"serve refused to start: {e}", file=sys.stderr)
        return 2
    logs.setup(server.settings.serve.log_format)  # a --config file may name it too
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop.set())
    try:
        server.start()
    except OSError as e:
        print(f"serve refused to start: {e}", file=sys.stderr)
        server.shutdown()
        return 2
    settings = server.settings.serve
    print(f"serving on http://{settings.host}:{server.web.port}  (results -> {settings.results})", flush=True)
    watch = notify.Watch(server.health, server.stop).start()  # systemd: READY=1, a watchdog on health (notify.py)
    if settings.show:
        show(server)
    else:
        server.wait()
    watch.close()
    server.shutdown()
    counts = server.counters()
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    failure = server.failure()
    if failure:
        print(f"serve stopped: {failure}", file=sys.stderr, flush=True)
        return 1
    if server.problems():
        print(f"cameras stopped: {'; '.join(server.problems())}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
