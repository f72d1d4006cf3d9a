"""Helpers of the serve tests that watch a running Server from outside."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2

from runtime.serve import Server, Settings
from tests.controlled import CATEGORY, part

DEFECT = (96, 64, 144, 112)  # the red box of the NG parts parts_folder draws


def result_lines(server: Server) -> list[dict]:
    """Every line the server's durable log holds so far."""
    path = server.settings.serve.results
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll `condition` until true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def parts_folder(folder: Path, n: int, every_ng: int = 3) -> Path:
    """`n` part images 0000.png... in `folder`, every `every_ng`-th one with a DEFECT box."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:04d}.png"), part(red_box=DEFECT if i % every_ng == every_ng - 1 else None))
    return folder


def serve_settings(controlled, source, tmp_path, **kw) -> Settings:
    """serve's settings for the controlled bundle: no explainer, any port, results in tmp_path, `kw` over them."""
    base = dict(
        source=str(source),
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        results=tmp_path / "results.jsonl",
    )
    return Settings.of(**(base | kw))


def strict_lines(path) -> list[dict]:
    """A results log's lines, failing the test on any token strict JSON has not (NaN, Infinity)."""
    return [_strict(x) for x in Path(path).read_text().splitlines()]


def _strict(text: str) -> dict:
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token} in {text[:80]}")

    return json.loads(text, parse_constant=refuse)


def http_get(port, path, timeout=5):
    """(status, body) of a GET on serve's port, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def looping_server(controlled, detector, tmp_path, sink: str) -> tuple[Path, Server]:
    """serve started over a looping folder of 4 parts at 10 fps, reconnecting within 0.2 s, with one sink:
    the folder is returned for the tests that take it away."""
    folder = parts_folder(tmp_path / "frames", 4)
    settings = serve_settings(controlled, folder, tmp_path, loop=True, max_fps=10, reconnect_max_s=0.2, sink=(sink,))
    return folder, Server(settings, detector=detector).start()
