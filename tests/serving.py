"""Helpers of the serve tests that watch a running Server from outside."""

from __future__ import annotations

import json
import time

from runtime.serve import Server


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
