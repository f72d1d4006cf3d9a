"""The result line: every label built by runtime/detect/lines.py follows result-line.schema.json,
and the schema refuses lines that break the contract (so validating against it means something)."""

import json
import math
import threading

import numpy as np
import pytest

from runtime.detect.lines import SCHEMA, FrameRef, explanation_line, result_line, teach_line
from runtime.detect.result import Region, Result
from runtime.serve.frames.sources import Frame
from runtime.serve.judging.pipeline import Inspector
from runtime.serve.results.records import ResultsLog

WHERE = FrameRef("20260101T000000-1", 3, 1767225600.5, "line1/", "0003.png")
SETTINGS = {"threshold": 0.5, "use_sam": True}


def _result(label="NG", **kw) -> Result:
    region = Region(np.ones((2, 2), bool), (0, 0, 2, 2), [[0, 0], [2, 0], [2, 2]], 4, 0.9, "a scratch", 0.7, "sam")
    fields = dict(
        image_score=0.8,
        anomaly_map=np.zeros((4, 4), np.float32),
        regions=[region],
        category="screw",
        branches=("language",),
        refiner="sam",
        timings_ms={"total": 3.25},
        providers=("CPUExecutionProvider",),
        bundle_id="b" * 16,
        settings=SETTINGS,
    )
    return Result(label, **(fields | kw))


def _errors(schema, line) -> list[str]:
    return [e.message for e in schema.iter_errors(json.loads(json.dumps(line)))]


def test_every_label_is_one_schema_and_one_head(line_schema, tmp_path):
    lines = [
        result_line(WHERE, _result("NG")),
        result_line(WHERE, _result("OK", regions=[])),
        result_line(WHERE, _result("ERROR", error="inference failed: boom")),
        teach_line(WHERE, 2),
        explanation_line(WHERE, {"text": "A dark line at the upper left.", "origin": "rules", "regions": []}),
    ]
    log = ResultsLog(tmp_path / "results.jsonl")  # the autouse check validates the file as well
    for line in lines:
        log.write(line)
        assert _errors(line_schema, line) == [], line
    log.close()
    heads = {tuple(list(line)[:6]) for line in lines}
    assert heads == {("schema", "run", "frame_id", "time", "source", "file")} and lines[0]["schema"] == SCHEMA
    assert all(line["settings"] == SETTINGS for line in lines[:3])


def test_the_schema_refuses_lines_that_break_the_contract(line_schema):
    good = result_line(WHERE, _result("OK", regions=[]))
    assert _errors(line_schema, good) == []
    broken = {
        "an OK carrying an error": good | {"error": "no"},
        "an ERROR without one": result_line(WHERE, _result("ERROR")),
        "no bundle_id": {k: v for k, v in good.items() if k != "bundle_id"},
        "no settings": {k: v for k, v in good.items() if k != "settings"},
        "an unknown field": good | {"verdict": "OK"},
        "an unknown label": good | {"label": "MAYBE"},
        "another schema version": good | {"schema": "lineside.result/0"},
        "a TEACH line without its count": teach_line(WHERE, 1) | {"references": None},
        "an EXPLANATION line without its explanation": {
            k: v
            for k, v in explanation_line(WHERE, {"text": "x", "origin": "rules", "regions": []}).items()
            if k != "explanation"
        },
        "an explanation without its origin": explanation_line(WHERE, {"text": "x", "regions": []}),
        "a skipped explanation without its reason": explanation_line(
            WHERE, {"text": "", "origin": "skipped", "regions": []}
        ),
        "an NG line without its explanation": {
            k: v for k, v in result_line(WHERE, _result("NG")).items() if k != "explanation"
        },
    }
    for why, line in broken.items():
        assert _errors(line_schema, line), why


def test_a_result_whose_settings_cannot_be_json_still_gets_a_full_error_line(line_schema):
    class Detector:  # its own ERROR result is not strict JSON either
        def error_result(self, why, category):
            return _result("ERROR", settings={"threshold": math.nan}, error=why, category=category)

    inspector = Inspector(Detector(), "screw", None, None, None, None, [], None, None, threading.Event())
    frame = Frame(7, 1767225600.0, None, "line1/", file="0007.png")
    record, text = inspector._line(frame, _result("NG", settings={"threshold": math.inf}))
    assert json.loads(text) == record and "NaN" not in text and "Infinity" not in text
    assert record["label"] == "ERROR" and "strict JSON" in record["error"] and "label NG withheld" in record["error"]
    assert record["bundle_id"] == "b" * 16 and record["settings"] == {} and record["file"] == "0007.png"
    assert _errors(line_schema, record) == []


@pytest.mark.parametrize("score", [math.nan, math.inf])
def test_a_score_that_is_not_a_number_is_an_error_line_with_a_null_score(line_schema, score):
    line = result_line(WHERE, _result("OK", image_score=score))
    assert line["label"] == "ERROR" and line["image_score"] is None and _errors(line_schema, line) == []
