"""--log-format json: every log record of serve is one JSON object on one line, extra fields included."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2

from runtime.serve.process.logs import JsonFormatter
from tests.controlled import CATEGORY, part

ROOT = Path(__file__).resolve().parents[1]


def test_a_record_is_one_json_line_with_its_extra_fields_and_traceback():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("lineside.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad\nframe")
        except ValueError:
            logger.exception("frame %d failed:\n%s", 7, "two lines", extra={"camera": "cam-a", "frame_id": 7})
        logger.warning("plain")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["level"] == "ERROR" and first["logger"] == "lineside.test-json"
    assert first["message"] == "frame 7 failed:\ntwo lines" and first["camera"] == "cam-a" and first["frame_id"] == 7
    assert "ValueError: bad" in first["exception"] and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", first["time"])
    assert set(second) == {"time", "level", "logger", "message"}


def test_serve_writes_json_log_lines(controlled, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), part())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"  # nobody listens: the sink logs its failure
    cmd = [sys.executable, "-m", "runtime.serve", "--bundle", str(controlled), "--category", CATEGORY]
    cmd += ["--source", str(frames), "--results", str(tmp_path / "r.jsonl"), "--port", "0", "--no-explain"]
    cmd += ["--sink", dead, "--webhook-retries", "0", "--log-format", "json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ours = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    failing = [x for x in ours if x["logger"] == "lineside.serve" and "failing" in x["message"]]
    assert failing and failing[0]["level"] == "WARNING" and failing[0]["sink"] == dead  # an extra field
    assert not re.search(r"^\d{4}-\d\d-\d\d \S+ lineside", proc.stderr, re.M)  # no text-format line left
