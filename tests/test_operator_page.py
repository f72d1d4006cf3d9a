"""The operator's page in a real headless Chromium, and operator feedback over real HTTP.

The page is loaded with OK, NG and ERROR verdicts and after a recording has ended,
at 1280 x 800 and at a phone's width, and what it shows is read back from the DOM.
LINESIDE_SCREENS=docs/screens writes the README's screenshots (else they go to a
temporary folder, and are checked all the same).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.judging.gallery import Layers
from tests.browser import Chromium, Tab
from tests.controlled import CATEGORY, part
from tests.serving import result_lines, wait_for

SIZE, DEFECT = 384, (150, 100, 222, 168)
DESK, PHONE = (1280, 800), (390, 844)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    yield browser
    browser.close()


@pytest.fixture
def screens(tmp_path) -> Path:
    return Path(os.environ.get("LINESIDE_SCREENS") or tmp_path / "screens")


def _frames(folder: Path, kinds: str) -> Path:
    """One image per letter: g a good part, d a defective one, x a file that is not an image."""
    folder.mkdir()
    for i, kind in enumerate(kinds):
        path = folder / f"part-{i:02d}.png"
        if kind == "x":
            path.write_bytes(b"\x89PNG broken")
        else:
            cv2.imwrite(str(path), part(SIZE, red_box=DEFECT if kind == "d" else None))
    return folder


def _server(controlled, tmp_path, frames: Path, **kw) -> Server:
    settings = Settings.of(
        **{"source": str(frames), "bundle": controlled, "category": CATEGORY, "port": 0}
        | {"results": tmp_path / "results.jsonl"}
        | kw
    )
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    return Server(settings, detector=detector).start()


def _call(server, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.web.port}{path}", data=data, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _trigger(server, inspected: int) -> None:
    assert _call(server, "/api/trigger")[0] == 202
    wait_for(lambda: server.inspector.handled >= inspected, 20, f"frame {inspected} inspected")


SHOWN = """(() => {
  const tile = document.querySelector('.tile'), field = f => tile.querySelector(`[data-field="${f}"]`).textContent;
  const boxed = f => document.querySelector(`#box [data-field="${f}"]`).textContent;
  const img = tile.querySelector('img.live');
  return {verdict: tile.querySelector('.verdict').className, word: tile.querySelector('.word').textContent,
    score: tile.querySelector('.score').textContent, what: tile.querySelector('.what').textContent,
    gallery: tile.querySelectorAll('.gallery .thumb').length, history: tile.querySelectorAll('.history .cell').length,
    category: field('category'), threshold: field('threshold'), source: field('source'), rate: field('rate'),
    counts: field('counts'), bundle: boxed('bundle'), precision: boxed('precision'), providers: boxed('providers'),
    ready: document.getElementById('ready').textContent, stale: tile.querySelector('.frame').classList.contains('stale'),
    natural: [img.naturalWidth, img.naturalHeight], shown: img.getBoundingClientRect().width,
    wide: document.documentElement.scrollWidth, wordHeight: tile.querySelector('.word').getBoundingClientRect().height};
})()"""


async def _shown(tab: Tab, verdict: str, history: int, gallery: int) -> dict:
    await tab.until(
        f"document.querySelector('.verdict.{verdict}') && document.querySelectorAll('.history .cell').length == {history}"
        f" && document.querySelectorAll('.gallery .thumb').length == {gallery}"
        " && document.querySelector('img.live').naturalWidth > 0",
        f"{verdict} with {history} verdicts in the history and {gallery} in the gallery",
    )
    return await tab.js(SHOWN)


def _box_fields_hold(shown: dict, server: Server) -> None:
    assert shown["category"] == CATEGORY
    assert shown["bundle"] == server.detector.bundle_id[:16]
    assert "fp32" in shown["precision"] and "CPU" in shown["providers"]
    assert shown["threshold"].startswith(f"{server.detector.settings.threshold:.3f}")
    assert shown["natural"] == [SIZE, SIZE] and shown["shown"] <= SIZE + 2  # its own size, never enlarged


def test_page_shows_ok_ng_and_error_at_desk_and_phone_width(controlled, tmp_path, chromium, screens):
    frames = _frames(tmp_path / "frames", "gddx")
    server = _server(controlled, tmp_path, frames, trigger="software", loop=True)
    url = f"http://127.0.0.1:{server.web.port}/"

    async def scenario():
        async with Tab(chromium) as tab:
            _trigger(server, 1)
            await tab.open(url, *DESK)
            ok = await _shown(tab, "OK", 1, 0)
            assert ok["word"] == "OK" and "< threshold" in ok["score"] and "file part-00.png" in ok["what"]
            assert ok["gallery"] == 0 and ok["source"].startswith("live") and not ok["stale"]
            assert ok["wordHeight"] >= 50  # read from across the line
            _box_fields_hold(ok, server)
            await tab.screenshot(screens / "ok.png")

            _trigger(server, 2)
            _trigger(server, 3)
            ng = await _shown(tab, "NG", 3, 2)
            assert ng["word"] == "NG" and "≥ threshold" in ng["score"] and "part-02.png" in ng["what"]
            await tab.until("document.querySelectorAll('.gallery .thumb img').length == 2", "two NG thumbnails")
            assert (await tab.js(SHOWN))["gallery"] == 2
            await tab.until("[...document.querySelectorAll('.gallery img')].every(i => i.naturalWidth > 0)", "thumbs")
            _box_fields_hold(ng, server)
            await tab.screenshot(screens / "ng.png")

            await tab.js("document.querySelector('.gallery .thumb').click()")
            shown = await tab.until(
                "(() => { const d = document.getElementById('detail');"
                " return d.open && d.querySelector('.full').naturalWidth > 0 && d.querySelector('.origin').textContent"
                " && [d.querySelector('.explanation').textContent, d.querySelector('.origin').textContent,"
                " d.querySelectorAll('.regions tbody tr').length, d.querySelector('.full').naturalWidth]; })()",
                "the NG frame's detail with its explanation",
            )
            text, origin, regions, width = shown
            assert CATEGORY in text and origin.startswith("explained by: ") and regions >= 1 and width == SIZE
            await tab.screenshot(screens / "ng-detail.png")
            await tab.js("document.getElementById('detail').close()")

            await tab.open(url, *PHONE, mobile=True)
            phone = await _shown(tab, "NG", 3, 2)
            assert phone["wide"] <= PHONE[0] and phone["gallery"] == 2  # nothing runs off a phone's screen
            await tab.screenshot(screens / "ng-phone.png")

            _trigger(server, 4)
            await tab.open(url, *DESK)
            error = await _shown(tab, "ERROR", 4, 2)
            assert error["word"] == "ERROR" and "could not be decoded" in error["score"] and error["gallery"] == 2
            await tab.screenshot(screens / "error.png")

    try:
        asyncio.run(scenario())
    finally:
        server.shutdown()
    for name in ("ok", "ng", "ng-detail", "ng-phone", "error"):
        assert (screens / f"{name}.png").stat().st_size < 200_000


def test_an_ended_recording_keeps_its_last_frame_greyed(controlled, tmp_path, chromium, screens):
    server = _server(controlled, tmp_path, _frames(tmp_path / "frames", "gd"), explain=False)
    server.wait()
    url = f"http://127.0.0.1:{server.web.port}/"

    async def scenario():
        async with Tab(chromium) as tab:
            for size, name in ((DESK, "ended.png"), (PHONE, "ended-phone.png")):
                await tab.open(url, *size, mobile=size == PHONE)
                shown = await _shown(tab, "NG", 2, 1)
                assert shown["source"].startswith("ended") and shown["stale"] and shown["ready"].startswith("not ready")
                assert shown["natural"] == [SIZE, SIZE] and shown["wide"] <= size[0]
                assert shown["counts"].startswith("inspected 2 ") and shown["gallery"] == 1
                await tab.screenshot(screens / name)

    try:
        wait_for(lambda: server.capture.finished.is_set(), 10, "the recording's end")
        asyncio.run(scenario())
    finally:
        server.shutdown()


def test_feedback_needs_the_token_writes_a_line_and_teaches_a_false_alarm(controlled, tmp_path, chromium):
    refs = tmp_path / "refs"
    refs.mkdir()
    cv2.imwrite(str(refs / "good.png"), part(SIZE))
    frames = _frames(tmp_path / "frames", "gddg")
    server = _server(controlled, tmp_path, frames, references=refs, api_token="s3cret", explain=False)
    try:
        server.wait()
        labels = [x["label"] for x in result_lines(server)]
        assert labels == ["OK", "NG", "NG", "OK"]
        wait_for(lambda: len(server.state.gallery.frames) == 2, 10, "both NG frames kept for the page")
        run = server.inspector.run_id
        ng, ok = {"run": run, "frame_id": 2, "by": "Ana"}, {"run": run, "frame_id": 1, "by": "Ana"}
        for token in (None, "wrong", "s3cre"):
            assert _call(server, "/api/feedback", ng | {"decision": "confirmed"}, token)[0] == 401
        assert not [x for x in result_lines(server) if x["label"] == "FEEDBACK"]  # refused: nothing written

        assert _call(server, "/api/feedback", ng | {"decision": "miss"}, "s3cret")[0] == 409  # a miss is of an OK
        assert _call(server, "/api/feedback", ng | {"frame_id": 99, "decision": "confirmed"}, "s3cret")[0] == 404
        assert _call(server, "/api/feedback", ng | {"decision": "confirmed", "by": ""}, "s3cret")[0] == 400
        assert _call(server, "/api/feedback", ng | {"decision": "confirmed"}, "s3cret")[0] == 200
        assert _call(server, "/api/feedback", ok | {"decision": "miss"}, "s3cret")[0] == 200
        held = len(server.inspector.references)
        status, line = _call(
            server, "/api/feedback", ng | {"frame_id": 3, "decision": "false_alarm"} | {"add_reference": True}, "s3cret"
        )
        assert status == 200 and line["reference_added"] is True
        wait_for(lambda: server.state is not None and not _learning(server)["rebuilding"], 30, "the memory rebuilt")
        assert len(server.inspector.references) == held + 1 and _learning(server)["rebuilt"] == 1
        assert (refs / f"feedback-{run}-00000003.png").exists()  # the next start learns it too

        decisions = [x for x in result_lines(server) if x["label"] == "FEEDBACK"]
        assert [(x["frame_id"], x["decision"], x["by"]) for x in decisions] == [
            (2, "confirmed", "Ana"),
            (1, "miss", "Ana"),
            (3, "false_alarm", "Ana"),
        ]
        assert all(x["run"] == run and x["decided_at"] >= x["time"] and x["file"] for x in decisions)

        async def through_the_page():  # the same through the page: the dialog, the token, the button
            async with Tab(chromium) as tab:
                await tab.open(f"http://127.0.0.1:{server.web.port}/", *DESK)
                await tab.until("document.querySelectorAll('.gallery .thumb').length == 2", "the gallery")
                await tab.js("document.querySelectorAll('.gallery .thumb')[1].click()")  # the older: frame 2
                await tab.until("document.getElementById('detail').open", "the dialog")
                await tab.js(
                    "const d = document.getElementById('detail'); d.querySelector('.who').value = 'Bo';"
                    "d.querySelector('.token').value = 'nope'; d.querySelector('[data-decision=false_alarm]').click()"
                )
                await tab.until("document.querySelector('.answer').textContent.startsWith('refused (401)')", "401")
                await tab.js(
                    "document.querySelector('.token').value = 's3cret';"
                    "document.querySelector('[data-decision=false_alarm]').click()"
                )
                await tab.until("document.querySelector('.answer').textContent.startsWith('written')", "the decision")
                await tab.js(
                    "document.getElementById('detail').close(); document.querySelector('.history .cell').click()"
                )
                buttons = await tab.until(  # frame 1 passed: only a miss can be said of it
                    "document.getElementById('detail').open && [...document.querySelectorAll('[data-decision]')]"
                    ".filter(b => !b.hidden).map(b => b.dataset.decision)",
                    "the OK frame's dialog",
                )
                assert buttons == ["miss"]

        asyncio.run(through_the_page())
        last = result_lines(server)[-1]
        assert (last["label"], last["frame_id"], last["decision"], last["by"]) == ("FEEDBACK", 2, "false_alarm", "Bo")
    finally:
        server.shutdown()


def test_feedback_is_refused_when_no_token_is_set(controlled, tmp_path):
    server = _server(controlled, tmp_path, _frames(tmp_path / "frames", "d"), explain=False)
    try:
        server.wait()
        body = {"run": server.inspector.run_id, "frame_id": 1, "decision": "confirmed", "by": "Ana"}
        status, answer = _call(server, "/api/feedback", body, "anything")
        assert status == 401 and "set api_token" in answer["error"]
    finally:
        server.shutdown()


def _learning(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.web.port}/api/status", timeout=10) as r:
        return json.loads(r.read())["cameras"][0]["learning"]


def test_one_tile_per_camera(controlled, tmp_path, chromium, screens):
    import yaml

    cameras = [
        {"id": "left", "source": str(_frames(tmp_path / "left", "gg"))},
        {"id": "right", "source": str(_frames(tmp_path / "right", "gd"))},
    ]
    (tmp_path / "cameras.yaml").write_text(yaml.safe_dump({"cameras": cameras}))
    server = _server(controlled, tmp_path, tmp_path / "left", cameras=tmp_path / "cameras.yaml", explain=False)

    async def scenario():
        async with Tab(chromium) as tab:
            await tab.open(f"http://127.0.0.1:{server.web.port}/", *DESK)
            await tab.until(
                "document.querySelectorAll('.tile .history .cell').length == 4"
                " && [...document.querySelectorAll('img.live')].every(i => i.naturalWidth > 0)",
                "two cameras' verdicts",
            )
            tiles = await tab.js(
                "[...document.querySelectorAll('.tile')].map(t => [t.dataset.camera, t.querySelector('.word').textContent,"
                " t.querySelectorAll('.gallery .thumb').length, t.querySelector('.camera-name').textContent])"
            )
            assert tiles == [["left", "OK", 0, "camera left"], ["right", "NG", 1, "camera right"]]
            await tab.screenshot(screens / "cameras.png")

    try:
        server.wait()
        asyncio.run(scenario())
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{server.web.port}/api/ng?camera=nowhere", timeout=10)
    finally:
        server.shutdown()


def test_the_gallery_keeps_the_last_ng_frames_small_and_bounded():
    import numpy as np

    from runtime.detect.result import Region, Result
    from runtime.serve.judging.state import State

    state = State(recent=10, gallery=3)
    frame = part(1000, red_box=(400, 400, 600, 600))
    mask = np.zeros(frame.shape[:2], bool)
    mask[400:600, 400:600] = True
    region = Region(
        mask, (400, 400, 600, 600), [[400, 400], [600, 400], [600, 600], [400, 600]], 40000, 0.9, "", 0.0, "contours"
    )
    heat = np.zeros(frame.shape[:2], np.float32)
    heat[400:600, 400:600] = 1.0
    for frame_id in range(1, 6):
        result = Result("NG", 0.9, heat, [region], category=CATEGORY, settings={"threshold": 0.5})
        state.publish({"run": "r", "frame_id": frame_id, "label": "NG", "image_score": 0.9}, frame, result)
        wait_for(lambda n=frame_id: state.gallery.waiting.empty() and state.find("r", n), 10, "the frame kept")
    wait_for(lambda: len(state.ng_frames()) == 3, 10, "three kept")
    assert [r["frame_id"] for r in state.ng_frames()] == [5, 4, 3]  # the newest first, the oldest gone
    kept = state.gallery_frame("r", 5)
    assert max(kept.result.anomaly_map.shape) <= 256 and kept.result.regions[0].mask.size == 0
    assert len(kept.jpeg) < 100_000 and kept.image_bgr().shape == frame.shape  # as the camera saw it, in a JPEG
    thumb = cv2.imdecode(np.frombuffer(kept.overlay_jpeg(Layers(), 240), np.uint8), cv2.IMREAD_COLOR)
    full = cv2.imdecode(np.frombuffer(kept.overlay_jpeg(Layers()), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape[1] == 240 and full.shape == frame.shape
    assert full[500, 500, 2] > full[500, 500, 0] and full[800, 800, 0] > full[800, 800, 2]  # hot region, cold part


def test_a_live_source_that_cannot_be_reached_is_shown_lost(controlled, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _server(controlled, tmp_path, tmp_path, source=f"http://127.0.0.1:{port}/cam.mjpg", reconnect_max_s=0.2)
    try:
        wait_for(lambda: server.capture.problem.startswith("cannot open source"), 10, "the source refused")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.web.port}/api/status", timeout=10) as r:
            source = json.loads(r.read())["cameras"][0]["source"]
        assert source["state"] == "lost" and source["live"] and "cannot open source" in source["problem"]
    finally:
        server.shutdown()


def test_names_are_shown_as_text_and_a_verdict_whose_frame_left_the_gallery_says_where_its_explanation_is(
    controlled, tmp_path, chromium
):
    """A file name holding markup is text everywhere it appears (banner, history, detail), never HTML; the
    detail of an NG verdict from the history whose frame the gallery no longer keeps does not promise an
    explanation that will never come."""
    frames = tmp_path / "frames"
    frames.mkdir()
    hostile = "<img src=x onerror=window.pwned=1>"
    for name in (f"{hostile}.png", "part-01.png"):  # both NG; "<" sorts first
        cv2.imwrite(str(frames / name), part(SIZE, red_box=DEFECT))
    server = _server(controlled, tmp_path, frames, explain=False, ng_gallery=1)
    server.wait()

    async def scenario():
        async with Tab(chromium) as tab:
            await tab.open(f"http://127.0.0.1:{server.web.port}/", *DESK)
            await _shown(tab, "NG", 2, 1)
            await tab.js("document.querySelectorAll('.history .cell')[0].click()")
            await tab.until("document.querySelector('#detail .title').textContent.includes('frame 1')", "detail")
            return await tab.js(
                "({title: document.querySelector('#detail .title').textContent,"
                " said: document.querySelector('#detail .explanation').textContent,"
                " cell: document.querySelectorAll('.history .cell')[0].title,"
                " planted: document.querySelectorAll('img[src=\"x\"]').length, pwned: window.pwned === 1})"
            )

    try:
        shown = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert hostile in shown["title"] and hostile in shown["cell"]
    assert shown["planted"] == 0 and not shown["pwned"]
    assert "no longer kept" in shown["said"] and "on its way" not in shown["said"]
