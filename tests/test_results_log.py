"""The results log after a stop mid-line (disk full, power cut): the next run must never glue its first
result onto the half line left behind, and the half line must not be lost either.

The end-to-end test stops a real serve the way a full disk does, with a real short write: the file-size limit
(RLIMIT_FSIZE) makes the kernel take part of a line and then refuse the rest (EFBIG), as a full tmpfs does with
ENOSPC, without needing a mount."""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import audit
from runtime.serve.results.records import TAIL_CHUNK, ResultsLog
from tests.controlled import CATEGORY
from tests.serving import parts_folder, strict_lines

ROOT = Path(__file__).resolve().parents[1]


def _quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.partial-*"))


def _content(path: Path) -> list[dict]:
    """The log's lines without their audit chain (seq, prev, hash: tests/test_audit.py)."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in ("seq", "prev", "hash")} for x in lines]


def test_a_partial_last_line_is_quarantined_and_the_log_goes_on_from_a_fresh_line(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    half = b'{"frame_id": 2, "image_score": 0.4'
    path.write_bytes(b'{"frame_id": 1}\n' + half)
    with caplog.at_level(logging.WARNING, "lineside.serve"):
        log = ResultsLog(path)
    log.write({"frame_id": 3})
    log.close()
    assert _content(path) == [{"frame_id": 1}, {"frame_id": 3}]
    (quarantine,) = _quarantined(path)
    assert quarantine.read_bytes() == half
    assert f"moved to {quarantine}" in caplog.text and "partial line (34 bytes" in caplog.text


def test_a_last_line_lacking_only_its_newline_is_kept(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"frame_id": 1}\n{"frame_id": 2}')
    with caplog.at_level(logging.WARNING, "lineside.serve"):
        log = ResultsLog(path)
    log.write({"frame_id": 3})
    log.close()
    assert [x["frame_id"] for x in _content(path)] == [1, 2, 3]
    assert not _quarantined(path) and "lacked only its newline" in caplog.text


def test_the_chain_goes_on_after_a_quarantined_partial_line(tmp_path):
    """A stop mid-line, then a restart: the half line is moved out and the next line links to the last whole
    one, so the log verifies as one chain (runtime/audit.py)."""
    path = tmp_path / "results.jsonl"
    log = ResultsLog(path)
    log.write({"frame_id": 1})
    log.write({"frame_id": 2})
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"frame_id": 3, "image_sc')
    log = ResultsLog(path)
    log.write({"frame_id": 3})
    log.close()
    assert [x["seq"] for x in strict_lines(path)] == [1, 2, 3] and len(_quarantined(path)) == 1
    assert audit.verify(path)[2] == []


def test_a_log_that_is_one_long_partial_line_is_moved_whole(tmp_path):
    path = tmp_path / "results.jsonl"
    junk = b'{"x": "' + b"y" * (3 * TAIL_CHUNK)  # longer than one backwards read
    path.write_bytes(junk)
    ResultsLog(path).close()
    assert path.read_bytes() == b"" and _quarantined(path)[0].read_bytes() == junk


def test_a_clean_log_and_a_device_are_left_alone(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"frame_id": 1}\n')
    ResultsLog(path).close()
    ResultsLog(Path("/dev/null")).close()
    assert path.read_bytes() == b'{"frame_id": 1}\n' and not _quarantined(path)  # nothing written: unchanged


def _serve(controlled, frames: Path, results: Path, file_size: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    cmd = [sys.executable, "-m", "runtime.serve", "--bundle", str(controlled), "--category", CATEGORY]
    cmd += ["--source", str(frames), "--results", str(results), "--port", "0", "--no-explain"]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=limit if file_size else None
    )


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and its short writes as Linux has them")
def test_serve_after_a_stop_mid_line_writes_only_whole_lines(controlled, tmp_path):
    frames = parts_folder(tmp_path / "frames", 6)
    probe = tmp_path / "probe.jsonl"
    first = _serve(controlled, parts_folder(tmp_path / "one", 1), probe)
    assert first.returncode == 0, first.stderr
    line = len(probe.read_bytes())

    results = tmp_path / "results.jsonl"
    stopped = _serve(controlled, frames, results, file_size=int(2.5 * line))  # the "disk" fills in line 3
    assert stopped.returncode == 1 and "results log" in stopped.stderr.splitlines()[-1], stopped.stderr
    left = results.read_bytes()
    assert left and not left.endswith(b"\n")  # what a full disk leaves: half a line

    again = _serve(controlled, frames, results)
    assert again.returncode == 0, again.stderr
    lines = strict_lines(results)  # every line whole JSON: nothing glued onto the half line
    assert [x["frame_id"] for x in lines] == [1, 2, *range(1, 7)]
    assert [x["seq"] for x in lines] == list(range(1, 9))  # one chain across the stop: audit.verify below
    assert audit.verify(results)[2] == []
    (quarantine,) = _quarantined(results)
    assert left == b"".join(x + b"\n" for x in left.split(b"\n")[:2]) + quarantine.read_bytes()
    assert "ended in a partial line" in again.stderr and str(quarantine) in again.stderr
