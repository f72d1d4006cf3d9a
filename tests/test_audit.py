"""The audit trail (issue 27, item 5): every verdict line says what made it, and the results log is a hash
chain that `lineside audit verify` checks, naming the line that was changed, removed or moved.

The tampering is done to logs the real ResultsLog wrote, and to the log of a real serve."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2

from runtime import audit
from runtime.bundle.loader import Bundle
from runtime.detect.detector import Detector
from runtime.serve import Server
from runtime.serve.results.records import ResultsLog
from tests.controlled import part
from tests.serving import parts_folder, serve_settings, strict_lines, wait_for

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret"


def _log(path: Path, n: int = 8) -> list[bytes]:
    log = ResultsLog(path)
    for i in range(1, n + 1):
        log.write({"frame_id": i, "verdict": "OK" if i % 3 else "NG", "score": i / 10})  # not a result line
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def _problems(path: Path) -> list[str]:
    return [str(p) for p in audit.verify(path)[2]]


def _rewrite(lines: list[bytes], index: int, change) -> bytes:
    """Line `index` (0-based) parsed, changed by `change(dict)`, written back as the chain would (no rehash)."""
    line = json.loads(lines[index])
    change(line)
    return json.dumps(line).encode() + b"\n"


def test_an_intact_log_verifies_with_its_count_and_head(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, 9))
    assert json.loads(lines[0])["prev"] == audit.GENESIS
    assert all(json.loads(b)["prev"] == json.loads(a)["hash"] for a, b in zip(lines, lines[1:]))
    assert audit.main(["verify", str(path)]) == 0
    assert f"intact: 8 lines, seq 1..8, head {json.loads(lines[-1])['hash']}" in capsys.readouterr().out


def test_a_changed_field_is_caught_at_its_line(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    lines[2] = _rewrite(lines, 2, lambda x: x.update(verdict="OK"))  # an NG made an OK
    path.write_bytes(b"".join(lines))
    assert _problems(path) == ["line 3: seq 3: its content does not match its hash: the line was changed"]


def test_a_changed_line_whose_hash_was_recomputed_is_caught_at_that_line(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    fields = json.loads(lines[4])
    body = {k: v for k, v in fields.items() if k not in ("seq", "prev", "hash")} | {"score": 0.01}
    forged, _ = audit.link(json.dumps(body), fields["seq"], fields["prev"])  # a consistent line 5 on its own
    lines[4] = forged.encode() + b"\n"
    path.write_bytes(b"".join(lines))
    (problem,) = _problems(path)
    assert problem.startswith("line 5: seq 5: changed, its own hash recomputed (line 6, seq 6")


def test_a_removed_line_is_caught_where_it_was(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    path.write_bytes(b"".join(lines[:3] + lines[4:]))
    assert _problems(path) == ["line 4: seq 5 follows seq 3 (line 3): 1 line(s) removed"]


def test_swapped_lines_are_named_as_reordered(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))
    assert _problems(path) == ["line 5: seq 4 comes after seq 5 (line 4): lines reordered or repeated"]


def test_a_log_whose_head_was_cut_says_how_many_lines_are_missing(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    path.write_bytes(b"".join(lines[3:]))
    assert _problems(path) == ["line 1: the chain starts at seq 4: its first 3 line(s) are missing (the head was cut)"]


def test_a_line_without_the_chain_is_named_and_so_is_the_gap_it_leaves(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    lines[5] = _rewrite(lines, 5, lambda x: [x.pop(k) for k in ("seq", "prev", "hash")])  # chain stripped
    path.write_bytes(b"".join(lines[:7]) + b'{"frame_id": 99, "verdict": "OK"}\n' + lines[7])  # and one inserted
    assert _problems(path) == [
        "line 6: carries no seq/prev/hash: not part of the chain (inserted by hand, or written before the chain)",
        "line 7: seq 7 follows seq 5 (line 5): 1 line(s) removed",
        "line 8: carries no seq/prev/hash: not part of the chain (inserted by hand, or written before the chain)",
    ]


def test_a_cut_tail_is_unterminated_and_a_restart_goes_on_with_the_chain(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path, 4)
    path.write_bytes(b"".join(lines)[:-20])
    assert _problems(path) == ["line 4: the last line is unterminated (a stop mid-write, or the log was cut)"] + [
        "line 4: carries no seq/prev/hash: not part of the chain (inserted by hand, or written before the chain)"
    ]
    log = ResultsLog(path)  # the partial line is quarantined; the chain goes on from line 3
    log.write({"frame_id": 5, "verdict": "OK"})
    log.close()
    assert [x["seq"] for x in strict_lines(path)] == [1, 2, 3, 4] and _problems(path) == []


def test_the_lineside_command_exits_1_naming_the_line(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = _log(path)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    cmd = [sys.executable, "-m", "lineside", "audit", "verify", str(path)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{path}: line 3: seq 4 follows seq 2 (line 2): 1 line(s) removed" in run.stdout
    path.write_bytes(b"".join(lines))
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "intact: 8 lines" in run.stdout, run.stdout + run.stderr
    run = subprocess.run(cmd[:-1] + [str(tmp_path / "none.jsonl")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "cannot read" in run.stderr


def _serve(controlled, tmp_path, frames: Path, **kw) -> Server:
    settings = serve_settings(controlled, frames, tmp_path, **kw)
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    server = Server(settings, detector=detector).start()
    server.wait()
    return server


def test_serve_writes_the_audit_block_and_one_chain_across_restarts(controlled, tmp_path):
    frames = parts_folder(tmp_path / "frames", 4)
    for _ in range(2):  # the second serve appends to the first one's log
        _serve(controlled, tmp_path, frames).shutdown()
    lines = strict_lines(tmp_path / "results.jsonl")
    assert [x["seq"] for x in lines] == list(range(1, 9)) and [x["frame_id"] for x in lines] == [1, 2, 3, 4] * 2
    assert _problems(tmp_path / "results.jsonl") == []
    bundle = Bundle.open(controlled)
    for line in lines:
        trail = line["audit"]
        pixels = cv2.imread(str(frames / line["file"]))  # what serve decoded: BGR, HxWx3
        assert trail["image_sha256"] == hashlib.sha256(pixels.tobytes()).hexdigest()
        assert trail["models"] == {n: bundle.component(n).files[p].sha256 for n, p in line["precisions"].items()}
        assert all(v == {"precision": "fp32", "verdict": "reference"} for v in trail["precisions"].values())
        assert trail["calibration_id"] == lines[0]["audit"]["calibration_id"]  # one threshold, one calibration
    assert len({x["audit"]["image_sha256"] for x in lines}) == 2  # parts_folder: good parts alike, NG parts alike


def _teach(server, frame_id: int, by: str) -> dict:
    body = {"run": server.inspector.run_id, "frame_id": frame_id, "decision": "false_alarm", "by": by}
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.web.port}/api/feedback",
        data=json.dumps(body | {"add_reference": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_who_taught_a_frame_is_in_the_chain_and_changing_it_is_caught(controlled, tmp_path):
    refs, frames = tmp_path / "refs", tmp_path / "frames"
    refs.mkdir()
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(refs / f"good-{i}.png"), part(384))
    cv2.imwrite(str(frames / "part-00.png"), part(384))
    cv2.imwrite(str(frames / "part-01.png"), part(384, red_box=(150, 100, 222, 168)))
    server = _serve(controlled, tmp_path, frames, references=refs, api_token=TOKEN, teach_screen=False)
    try:
        wait_for(lambda: len(server.state.gallery.frames) == 1, 10, "the NG frame kept for the page")
        _teach(server, 2, "Ana")
        wait_for(lambda: "TEACH" in (tmp_path / "results.jsonl").read_text(), 30, "the TEACH line")
    finally:
        server.shutdown()
    path = tmp_path / "results.jsonl"
    lines = strict_lines(path)
    assert [(x["label"], x.get("by")) for x in lines] == [
        ("OK", None),
        ("NG", None),
        ("FEEDBACK", "Ana"),
        ("TEACH", "Ana"),
    ]
    assert [x["seq"] for x in lines] == [1, 2, 3, 4] and _problems(path) == []
    raw = path.read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b'"by": "Ana"', b'"by": "Bo"')
    path.write_bytes(b"".join(raw))
    assert _problems(path) == ["line 3: seq 3: its content does not match its hash: the line was changed"]


def test_an_int8_graph_carries_its_parity_verdict_measured_on_this_machine(tiny_bundle, tmp_path):
    """The random-weight tiny bundle's int8 image graph, allowed as runtime.check's tests allow it: the audit
    says what this box measured (the cache serve filled at start), not what export claimed."""
    from runtime.serve.results.provenance import Provenance

    settings = dict(precision="int8", allow_unverified_precision=True, precision_cache_dir=tmp_path / "parity")
    detector = Detector.from_bundle(tiny_bundle, text_cache_dir=tmp_path / "text", **settings)
    trail = Provenance.of(detector)
    int8 = {name: v for name, v in trail.precisions.items() if v["precision"] == "int8"}
    assert int8, trail.precisions
    for name, said in int8.items():
        assert said["verdict"] in ("holds its bound here", "outside its bound, allowed")
        assert (
            isinstance(said["cosine_here"], float)
            and trail.models[name] == Bundle.open(tiny_bundle).component(name).files["int8"].sha256
        )
