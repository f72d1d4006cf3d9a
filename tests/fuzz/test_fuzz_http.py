"""HTTP against a real serve (one per module, a folder of the controlled bundle's parts, trigger=software, a
token): generated methods, paths, query strings, headers and bodies, the trigger and feedback (teaching)
endpoints most. Every answer is below 500, an /api/ error is JSON that says what was wrong (aiohttp's own
400/404/405/417 before a handler runs, and an unknown camera's 404, are plain text), serve stays healthy, nothing in the log carries a
traceback, and every accepted trigger is exactly one result line, every accepted decision one FEEDBACK line."""

from __future__ import annotations

import collections
import http.client
import json
import logging

import cv2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.detect.detector import Detector
from runtime.detect.lines import DECISIONS
from runtime.serve import Server, Settings
from tests.controlled import CATEGORY, part
from tests.fuzz.invariants import Captured
from tests.serving import DEFECT, result_lines, wait_for

pytestmark = pytest.mark.fuzz

TOKEN = "fuzz-token"
URL_SAFE = st.text("abcXYZ019-._~%/?&=:;@!$'()*+,[]", max_size=24)
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)


class Ledger:
    """What serve was told and answered, to be held against its results log at the end."""

    def __init__(self, frames: int):
        self.frames = frames
        self.triggers: collections.Counter = collections.Counter()  # accepted trigger id -> times
        self.decisions = 0  # feedback answered 200: one FEEDBACK line each


@pytest.fixture(scope="module")
def served(controlled, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-http")
    refs, frames = tmp / "refs", tmp / "frames"
    refs.mkdir()
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(refs / f"good-{i}.png"), part())
    count = settings().max_examples * 3 + 20  # never more triggers accepted than frames: none left waiting
    for i in range(count):
        cv2.imwrite(str(frames / f"{i:05d}.png"), part(red_box=DEFECT if i % 3 == 0 else None))
    captured = Captured()
    logging.getLogger().addHandler(captured)
    base = {"source": str(frames), "bundle": controlled, "category": CATEGORY, "port": 0, "explain": False}
    more = {"results": tmp / "results.jsonl", "references": refs, "api_token": TOKEN, "trigger": "software"}
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp / "text")
    server = Server(Settings.of(**base | more), detector=detector).start()
    try:
        wait_for(lambda: server.web.port, 20, "serve's port")
        for i in range(6):  # a few inspected frames, NG among them, for feedback to name
            _request(server.web.port, "POST", "/api/trigger", body=f"warm-{i}".encode(), headers=_auth())
        wait_for(lambda: len(result_lines(server)) == 6, 30, "six warm-up inspections")
        ledger = Ledger(count)
        ledger.triggers.update(f"warm-{i}" for i in range(6))
        yield server, ledger, captured
    finally:
        server.shutdown()
        logging.getLogger().removeHandler(captured)


def _auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def _request(port, method, path, body=None, headers=None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request on a fresh connection; a stream's body is not read."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        kind = response.getheader("Content-Type", "")
        data = b"" if kind.startswith("multipart/") or method == "HEAD" else response.read()
        return response.status, kind, data
    finally:
        connection.close()


def _json_bodies(run: str, frame_ids: list[int]):
    real = st.fixed_dictionaries(
        {
            "run": st.sampled_from([run, "", "other-run"]) | st.integers() | st.none(),
            "frame_id": st.sampled_from(frame_ids) | st.integers(-3, 10**20) | st.booleans() | st.text(max_size=4),
            "decision": st.sampled_from([*DECISIONS, "", "OK", "false-alarm"]) | st.integers(),
            "by": st.sampled_from(["Ana", " ", "x" * 65, "a\nb", "Bo\x00"]) | st.text(max_size=70) | st.integers(),
        },
        optional={
            "add_reference": st.booleans() | st.sampled_from([0, 1, "true", None]),
            "id": st.text(max_size=140) | st.integers() | st.booleans() | st.lists(st.integers(), max_size=2),
            "part_id": st.text(max_size=140) | st.integers() | st.none() | st.floats(),
        },
    )
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    return st.one_of(real, anything).map(lambda v: json.dumps(v).encode())


@st.composite
def bodies(draw, run: str, frame_ids: list[int]) -> bytes | None:
    kind = draw(st.sampled_from(["json", "json", "json", "none", "bytes", "text", "huge", "nested", "nan"]))
    if kind == "json":
        return draw(_json_bodies(run, frame_ids))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "huge":
        return b"x" * draw(st.sampled_from([4096, 4097, 70_000, 2_000_000]))
    if kind == "nested":
        depth = draw(st.sampled_from([50, 900, 2000, 4000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        return (opener * depth).encode()
    return draw(st.sampled_from([b"NaN", b'{"id": NaN}', b'{"frame_id": Infinity}', b"-Infinity", b'{"id": 1e999}']))


@st.composite
def requests(draw, run: str, frame_ids: list[int]):
    target = draw(st.sampled_from(["trigger", "trigger", "feedback", "feedback", "api", "other"]))
    if target == "trigger":
        path = "/api/trigger"
    elif target == "feedback":
        path = "/api/feedback"
    elif target == "api":
        known = ["status", "results", "result/latest", "ng", "frame/latest.jpg", f"ng/{run}/1.jpg", "trigger", ""]
        path = "/api/" + draw(st.sampled_from(known) | URL_SAFE.map(lambda t: t.lstrip("/?")))
    else:
        known = ["/", "/healthz", "/readyz", "/metrics", "/static/page.js", "/static/../x", "/stream", "//api"]
        path = draw(st.sampled_from(known) | URL_SAFE.map(lambda t: "/" + t))
    method = "POST" if target in ("trigger", "feedback") and draw(st.integers(0, 4)) else None
    method = method or draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"]))
    query = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["camera", "since", "id", "part_id", "width", "heatmap", "x"]),
                st.sampled_from(["", "0", "-1", "1e3", "9" * 30, "cam", "%00", "%ff"]) | URL_SAFE,
            ),
            max_size=3,
        )
    )
    if query and "?" not in path:
        path += "?" + "&".join(f"{k}={v.replace('&', '').replace('#', '')}" for k, v in query)
    headers = {}
    auth = draw(st.sampled_from(["bearer", "bearer", "x-token", "wrong", "none", "garbage"]))
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "x-token":
        headers["X-Lineside-Token"] = TOKEN
    elif auth == "wrong":
        headers["Authorization"] = f"Bearer {TOKEN}x"
    elif auth == "garbage":
        headers[draw(st.sampled_from(["Authorization", "X-Lineside-Token"]))] = draw(HEADER_TEXT).strip()
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data", "x/y; a=b"]))
        headers["Content-Type"] = draw(st.just(kind) | HEADER_TEXT.map(str.strip).filter(bool))
    if draw(st.integers(0, 5)) == 0:
        headers[draw(st.sampled_from(["Accept", "Cookie", "X-Forwarded-For", "Range"]))] = draw(HEADER_TEXT).strip()
    if draw(st.integers(0, 9)) == 0:  # ASCII only: aiohttp's own answer to a non-UTF-8 Expect is a 500 (reported)
        headers["Expect"] = draw(st.sampled_from(["100-continue", "0", "", "200-ok"]) | st.text(ASCII, max_size=12))
    burst = draw(st.integers(1, 6)) if target == "trigger" and draw(st.integers(0, 9)) == 0 else 1
    return method, path, headers, draw(bodies(run, frame_ids)), burst


def _frame_ids(server) -> list[int]:
    return [x["frame_id"] for x in result_lines(server) if x["label"] in ("OK", "NG")][:6]


def _is_json_error(data: bytes) -> bool:
    try:
        body = json.loads(data)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str) and bool(body["error"].strip())


def test_any_request_is_answered_below_500_and_api_errors_are_json(served):
    server, ledger, captured = served

    @given(requests(server.inspector.run_id, _frame_ids(server)))
    def one(request):
        method, path, headers, body, burst = request
        if (
            path.startswith("/api/trigger")
            and method == "POST"
            and sum(ledger.triggers.values()) + burst > ledger.frames
        ):
            burst = 0  # the folder's frames are all promised: no trigger left waiting at the end
        seen = len(captured.bad)
        for _ in range(burst):
            status, kind, data = _request(server.web.port, method, path, body, headers)
            assert status < 500, (status, method, path, data[:200])
            if path.startswith("/api/") and method != "HEAD":
                if kind.startswith("application/json"):
                    if status >= 400:
                        assert _is_json_error(data), (status, path, data[:200])
                else:  # aiohttp's own (unparsable, no route, wrong method, an unknown Expect), an unknown ?camera=
                    assert status in (400, 404, 405, 417) or kind == "image/jpeg", (status, kind, path, data[:200])
            route = path.split("?")[0]
            if route == "/api/trigger" and method == "POST" and status == 202:
                answer = json.loads(data)
                assert 0 < len(answer["id"]) <= 128 and answer["id"].isprintable()
                assert "Authorization" in headers or "X-Lineside-Token" in headers  # never without the token
                ledger.triggers[answer["id"]] += 1
            if route == "/api/feedback" and method == "POST" and status == 200:
                sent = json.loads(body)  # never 200 on what is not a decision on a held frame
                assert sent["run"] == server.inspector.run_id and sent["decision"] in DECISIONS, body[:200]
                ledger.decisions += 1
        status, _, text = _request(server.web.port, "GET", "/healthz")
        assert status == 200, text
        assert not captured.bad[seen:], captured.bad[seen:]

    one()


def test_every_accepted_trigger_is_one_result_line_and_every_decision_one_feedback_line(served):
    server, ledger, captured = served
    expected = sum(ledger.triggers.values())

    def inspected():
        return [x for x in result_lines(server) if x["label"] in ("OK", "NG")]

    wait_for(lambda: len(inspected()) >= expected, 120, f"{expected} triggered inspections")
    lines = result_lines(server)
    assert collections.Counter(x["trigger_id"] for x in inspected()) == ledger.triggers
    assert len({(x["run"], x["frame_id"]) for x in inspected()}) == expected  # each frame once
    assert sum(x["label"] == "FEEDBACK" for x in lines) == ledger.decisions
    assert not captured.bad, captured.bad[:5]
