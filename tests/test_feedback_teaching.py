"""A false alarm taught from the operator's page is screened as --teach's frames are, and the results log
records who taught what (issue 25, case 10). The controlled bundle, a real serve, its HTTP API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import cv2

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from tests.controlled import CATEGORY, part
from tests.serving import result_lines, wait_for

SIZE, TOKEN = 384, "s3cret"
DEFECT = (150, 100, 222, 168)  # in this encoder's global space as close to a good part as a good part
LARGE = (100, 100, 284, 284)  # a defect over half the part: an outlier among the good ones


def _server(controlled, tmp_path, references: int, box=DEFECT, **kw) -> Server:
    refs, frames = tmp_path / "refs", tmp_path / "frames"
    refs.mkdir()
    frames.mkdir()
    for i in range(references):
        cv2.imwrite(str(refs / f"good-{i}.png"), part(SIZE))
    cv2.imwrite(str(frames / "part-00.png"), part(SIZE))
    cv2.imwrite(str(frames / "part-01.png"), part(SIZE, red_box=box))
    base = {"source": str(frames), "bundle": controlled, "category": CATEGORY, "port": 0, "explain": False}
    settings = Settings.of(
        **base | {"results": tmp_path / "results.jsonl", "references": refs, "api_token": TOKEN} | kw
    )
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    server = Server(settings, detector=detector).start()
    server.wait()
    wait_for(lambda: len(server.state.gallery.frames) == 1, 10, "the NG frame kept for the page")
    return server


def _teach(server, frame_id: int, by: str) -> tuple[int, dict]:
    body = {"run": server.inspector.run_id, "frame_id": frame_id, "decision": "false_alarm", "by": by}
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.web.port}/api/feedback",
        data=json.dumps(body | {"add_reference": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _learning(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.web.port}/api/status", timeout=10) as r:
        return json.loads(r.read())["cameras"][0]["learning"]


def test_a_defective_frame_called_a_false_alarm_is_refused_as_a_reference_and_says_why(controlled, tmp_path):
    server = _server(controlled, tmp_path, references=3, box=LARGE)
    try:
        assert [x["label"] for x in result_lines(server)] == ["OK", "NG"]
        held = len(server.inspector.references)
        status, line = _teach(server, 2, "Ana")
        assert status == 200, line  # the decision stands and is written: only the teaching is refused
        assert line["reference_refused"].startswith("outlier (distance to the others") and "reference_added" not in line
        assert len(server.inspector.references) == held and _learning(server)["rebuilt"] == 0
        assert "frame" in _learning(server)["problem"] and "outlier" in _learning(server)["problem"]  # on the page
        assert not list((tmp_path / "refs").glob("feedback-*"))  # nor learnt at the next start
        logged = [x for x in result_lines(server) if x["label"] in ("FEEDBACK", "TEACH")]
        assert [(x["label"], x["frame_id"], x["by"], x["reference_refused"]) for x in logged] == [
            ("FEEDBACK", 2, "Ana", line["reference_refused"])
        ]
        status, again = _teach(server, 2, "Bo")  # refused again, for the same reason, not "taught already"
        assert status == 200 and again["reference_refused"] == line["reference_refused"]
    finally:
        server.shutdown()


def test_a_taught_frame_leaves_a_teach_line_naming_who_taught_it(controlled, tmp_path):
    server = _server(controlled, tmp_path, references=3, teach_screen=False)  # --teach's setting, for feedback too
    try:
        held = len(server.inspector.references)
        status, line = _teach(server, 2, "Ana")
        assert status == 200 and line["reference_added"] is True and "reference_refused" not in line
        wait_for(lambda: _learning(server)["rebuilt"] == 1, 30, "the memory rebuilt with the frame")
        wait_for(lambda: any(x["label"] == "TEACH" for x in result_lines(server)), 10, "the TEACH line")
        logged = [x for x in result_lines(server) if x["label"] in ("FEEDBACK", "TEACH")]
        assert [(x["label"], x["frame_id"], x["by"]) for x in logged] == [("FEEDBACK", 2, "Ana"), ("TEACH", 2, "Ana")]
        assert logged[1]["references"] == held + 1 == len(server.inspector.references)
        assert logged[1]["run"] == line["run"] and logged[1]["file"] == line["file"] == "part-01.png"
    finally:
        server.shutdown()
