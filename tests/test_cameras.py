"""Several cameras in one process: a YAML cameras file, one detector's sessions shared, per-camera everything
else, and one camera failing while the others go on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
import yaml

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.__main__ import main as serve_main
from runtime.serve.cameras import read_cameras
from tests.controlled import CATEGORY, part

DEFECT = (96, 64, 144, 112)


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _folder(root: Path, name: str, count: int, defective=()) -> Path:
    folder = root / name
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"{name}-{i:02d}.png"), part(red_box=DEFECT if i in defective else None))
    return folder


def _cameras_file(path: Path, cameras: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"cameras": cameras}))
    return path


def _settings(controlled, tmp_path, cameras: Path, **kw) -> Settings:
    base = dict(cameras=cameras, bundle=controlled, category=CATEGORY, port=0, explain=False)
    return Settings.of(**(base | {"results": tmp_path / "results.jsonl"} | kw))


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_three_cameras_share_one_detector_and_keep_their_own_lines_thresholds_and_metrics(
    controlled, detector, tmp_path
):
    cameras = _cameras_file(
        tmp_path / "cameras.yaml",
        [
            {"id": "left", "source": str(_folder(tmp_path, "l", 4, defective={1}))},
            {"id": "right", "source": str(_folder(tmp_path, "r", 5, defective={0, 3})), "part_id_pattern": r"r-(\d+)"},
            {"id": "top", "source": str(_folder(tmp_path, "t", 3, defective={2})), "threshold": 1.0},
        ],
    )
    server = Server(_settings(controlled, tmp_path, cameras, save_ng=tmp_path / "ng"), detector=detector).start()
    try:
        server.wait()
        status = json.loads(_get(server.web.port, "/api/status")[1])
        metrics = _get(server.web.port, "/metrics")[1].decode()
    finally:
        server.shutdown()
    lines = _lines(tmp_path / "results.jsonl")
    by = {c: [x for x in lines if x["camera"] == c] for c in ("left", "right", "top")}
    assert [len(by[c]) for c in by] == [4, 5, 3] and len(lines) == 12  # one log, every line names its camera
    assert [x["frame_index"] for x in by["right"]] == list(range(5))
    assert [x.get("part_id") for x in by["right"]] == ["00", "01", "02", "03", "04"] and "part_id" not in by["left"][0]
    assert [x["label"] for x in by["left"]] == ["OK", "NG", "OK", "OK"]
    assert [x["label"] for x in by["right"]] == ["NG", "OK", "OK", "NG", "OK"]
    assert [x["label"] for x in by["top"]] == ["OK"] * 3  # its own threshold: 1.0, nothing reaches it
    assert {x["settings"]["threshold"] for x in by["top"]} == {1.0} and by["left"][0]["settings"]["threshold"] == 0.5
    # one set of sessions: every camera's detector runs the same encoder objects
    encoders = {id(c.inspector.detector.encoder) for c in server.cameras.values()}
    assert encoders == {id(server.detector.encoder)}
    assert [(c["id"], c["ready"], c["counters"]["inspected"]) for c in status["cameras"]] == [
        ("left", False, 4),
        ("right", False, 5),
        ("top", False, 3),
    ]  # (recordings that have ended are no longer connected)
    assert 'lineside_frames_inspected_total{camera="right"} 5.0' in metrics
    assert 'lineside_results_total{camera="top",label="OK"} 3.0' in metrics
    saved = sorted(p.name for p in (tmp_path / "ng").glob("*.jpg"))
    assert [n.split("_")[:2] for n in saved] == [["left", "l-01"], ["right", "00"], ["right", "03"]]
    assert server.counters()["inspected"] == 12 and server.problems() == []


def test_one_camera_failing_never_stops_the_others(controlled, detector, tmp_path):
    cameras = _cameras_file(
        tmp_path / "cameras.yaml",
        [
            {"id": "good", "source": str(_folder(tmp_path, "g", 6)), "max_fps": 20},
            {"id": "full-disk", "source": str(_folder(tmp_path, "f", 3)), "results": "/dev/full"},
            {"id": "unplugged", "source": "http://127.0.0.1:9/cam.mjpg", "reconnect_max_s": 0.2},
        ],
    )
    server = Server(_settings(controlled, tmp_path, cameras), detector=detector).start()
    try:
        deadline_lines = 6
        while len(_lines(tmp_path / "results.jsonl")) < deadline_lines:
            assert not server.stop.is_set(), server.failure()
            server.stop.wait(0.05)
        assert _get(server.web.port, "/healthz")[0] == 200  # alive: it still inspects the good camera
        code, ready = _get(server.web.port, "/readyz")
        status = {c["id"]: c for c in json.loads(_get(server.web.port, "/api/status")[1])["cameras"]}
    finally:
        server.shutdown()
    assert [x["camera"] for x in _lines(tmp_path / "results.jsonl")] == ["good"] * 6
    assert code == 503 and b"camera full-disk: results log /dev/full cannot be written" in ready
    assert b"camera unplugged: cannot open source" in ready
    assert "cannot be written" in status["full-disk"]["problem"] and not status["unplugged"]["ready"]
    assert status["good"]["counters"]["inspected"] >= 5
    assert server.failure() is None and [p.split(":")[0] for p in server.problems()] == ["camera full-disk"]


def test_every_camera_failing_stops_serve_with_a_non_zero_exit(controlled, tmp_path, capsys):
    cameras = _cameras_file(
        tmp_path / "cameras.yaml",
        [{"id": "a", "source": str(_folder(tmp_path, "a", 2)), "results": "/dev/full"}],
    )
    argv = ["--cameras", str(cameras), "--bundle", str(controlled), "--category", CATEGORY, "--port", "0"]
    assert serve_main([*argv, "--no-explain", "--results", str(tmp_path / "r.jsonl")]) == 1
    assert "camera a: results log /dev/full cannot be written" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cameras, message",
    [
        ([{"id": "a", "source": "0", "treshold": 0.4}], "camera a: unknown settings ['treshold']"),
        ([{"id": "a", "source": "0", "port": 9000}], "camera a: port is one for the whole process"),
        ([{"id": "a", "source": "0", "precision": "int8"}], "camera a: precision is one for the whole process"),
        ([{"id": "a", "source": "0"}, {"id": "a", "source": "1"}], "camera ids must differ; a given twice"),
        ([{"id": "a/b", "source": "0"}], "id 'a/b' must be 1 to 64 letters"),
        ([{"id": "a"}], "camera a: no source"),
        ([{"id": "a", "source": "0", "threshold": 2}], "camera a: setting threshold: 2.0 must be <= 1.0"),
        ([{"id": "a", "source": "0", "teach": "many"}], "setting teach: 'many' is not a valid int"),
        ([], "give a list of cameras"),
        (["just a string"], "camera 1 must be a mapping"),
    ],
)
def test_bad_cameras_files_are_refused_naming_the_camera_and_the_setting(tmp_path, cameras, message):
    path = _cameras_file(tmp_path / "cameras.yaml", cameras)
    with pytest.raises(ValueError) as e:
        read_cameras(path, Settings())
    assert message in str(e.value) and str(path) in str(e.value)


def test_numbers_in_the_file_are_taken_as_text_where_a_setting_is_text(tmp_path):
    path = _cameras_file(tmp_path / "c.yaml", [{"id": 7, "source": 0, "threshold": 0.7, "teach": 4}])
    (spec,) = read_cameras(path, Settings())
    assert (spec.id, spec.settings.serve.source, spec.settings.serve.camera_id) == ("7", "0", "7")
    assert (spec.settings.detector.threshold, spec.settings.serve.teach) == (0.7, 4)


def test_a_camera_that_cannot_be_set_up_is_named(controlled, tmp_path, capsys):
    cameras = _cameras_file(
        tmp_path / "c.yaml",
        [
            {"id": "ok", "source": str(_folder(tmp_path, "f", 1))},
            {"id": "bad", "source": str(_folder(tmp_path, "g", 1)), "references": str(tmp_path / "nowhere")},
        ],
    )
    argv = ["--cameras", str(cameras), "--bundle", str(controlled), "--category", CATEGORY, "--port", "0"]
    assert serve_main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 2
    assert "camera bad: " in capsys.readouterr().err


def test_captured_cuda_graphs_are_refused_with_several_cameras(controlled, tmp_path, capsys):
    cameras = _cameras_file(tmp_path / "c.yaml", [{"id": "a", "source": "0"}, {"id": "b", "source": "1"}])
    assert serve_main(["--cameras", str(cameras), "--bundle", str(controlled), "--port", "0", "--cuda-graph"]) == 2
    assert "setting cuda_graph: a captured graph keeps SAM's image embeddings" in capsys.readouterr().err


def test_a_cameras_file_that_is_not_yaml_is_refused_at_start(controlled, tmp_path, capsys):
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras: [ {id: a, source: 0\n")
    assert serve_main(["--cameras", str(path), "--bundle", str(controlled), "--port", "0"]) == 2
    assert f"cameras file {path}" in capsys.readouterr().err


def test_the_cameras_benchmark_measures_one_process_against_the_number_of_cameras(controlled, tmp_path):
    from benchmarks.cameras import main as bench

    out = tmp_path / "report"
    argv = ["--bundle", str(controlled), "--category", CATEGORY, "--cameras", "1,2", "--frames", "3"]
    assert bench([*argv, "--seconds", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "cameras.json").read_text())["rows"]
    assert [(r["how"], r["cameras"]) for r in rows] == [("one process", 1), ("one process", 2)]
    assert all(r["fps_total"] > 0 and r["slowest_camera_fps"] > 0 and r["errors"] == 0 for r in rows)
    assert "| one process | 2 |" in (out / "cameras.md").read_text()


def test_the_cameras_benchmark_measures_the_cameras_through_a_real_triton_server(controlled, tmp_path):
    """--triton: the bundle exported, served by nvidia-pytriton's tritonserver, every frame inspected there."""
    from benchmarks.cameras import main as bench

    out = tmp_path / "report"
    argv = ["--bundle", str(controlled), "--category", CATEGORY, "--cameras", "2", "--frames", "3", "--triton"]
    assert bench([*argv, "--seconds", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["how"]: r for r in json.loads((out / "cameras.json").read_text())["rows"]}
    remote = rows["one process, Triton"]
    assert remote["cameras"] == 2 and remote["slowest_camera_fps"] > 0 and remote["errors"] == 0, remote
    assert remote["p99_ms"] >= remote["p50_ms"] > 0
    assert remote["rss_mb"] > rows["one process"]["rss_mb"] + 50  # tritonserver and its stubs counted in


def test_a_trigger_names_its_camera_and_only_that_camera_inspects(controlled, detector, tmp_path):
    cameras = _cameras_file(
        tmp_path / "cameras.yaml",
        [
            {"id": "a", "source": str(_folder(tmp_path, "a", 3)), "trigger": "software"},
            {"id": "b", "source": str(_folder(tmp_path, "b", 3)), "trigger": "software"},
        ],
    )
    server = Server(_settings(controlled, tmp_path, cameras), detector=detector).start()
    try:
        port = server.web.port
        for query in ("?camera=b&part_id=SN-5", "?camera=b", "?camera=a&id=t-a"):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/trigger{query}", b"", method="POST")
            with urllib.request.urlopen(request, timeout=5) as r:
                assert r.status == 202
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/trigger?camera=c", b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 404 and b"no camera 'c'" in refused.value.read()
        deadline = 300
        while len(_lines(tmp_path / "results.jsonl")) < 3 and deadline:
            server.stop.wait(0.1)
            deadline -= 1
    finally:
        server.shutdown()
    lines = _lines(tmp_path / "results.jsonl")
    assert [(x["camera"], x.get("part_id"), x["file"]) for x in lines if x["camera"] == "b"] == [
        ("b", "SN-5", "b-00.png"),
        ("b", None, "b-01.png"),
    ]
    assert [(x["camera"], x["trigger_id"]) for x in lines if x["camera"] == "a"] == [("a", "t-a")]


def test_cameras_share_one_agent_and_each_explanation_names_its_camera(controlled, detector, tmp_path):
    cameras = _cameras_file(
        tmp_path / "cameras.yaml",
        [
            {"id": "a", "source": str(_folder(tmp_path, "a", 3, defective={0}))},
            {"id": "b", "source": str(_folder(tmp_path, "b", 3, defective={2}))},
        ],
    )
    server = Server(_settings(controlled, tmp_path, cameras, explain=True), detector=detector).start()
    try:
        server.wait()
        deadline = 600
        while sum(x["label"] == "EXPLANATION" for x in _lines(tmp_path / "results.jsonl")) < 2 and deadline:
            server.stop.wait(0.1)
            deadline -= 1
    finally:
        server.shutdown()
    assert {c.explainer.agent for c in server.cameras.values()} == {server.agent}  # one agent, taken in turn
    lines = _lines(tmp_path / "results.jsonl")
    ng = {(x["camera"], x["frame_id"]) for x in lines if x["label"] == "NG"}
    explained = {(x["camera"], x["frame_id"]) for x in lines if x["label"] == "EXPLANATION"}
    assert ng == explained == {("a", 1), ("b", 3)}


def test_every_api_endpoint_reads_each_camera_of_two(controlled, detector, tmp_path):
    """Issue 24 item 4: /api/result/latest, /api/results and /api/status take ?camera=ID, and without it
    answer for every camera (they served the first camera's state only)."""
    cameras = _cameras_file(
        tmp_path / "cameras.yaml",
        [
            {"id": "a", "source": str(_folder(tmp_path, "a", 3))},
            {"id": "b", "source": str(_folder(tmp_path, "b", 4, defective={1}))},
        ],
    )
    server = Server(_settings(controlled, tmp_path, cameras), detector=detector).start()
    try:
        server.wait()

        def get(path: str):
            code, body = _get(server.web.port, path)
            return code, json.loads(body) if code == 200 else body

        latest = {c: get(f"/api/result/latest?camera={c}")[1] for c in ("a", "b")}
        newest = get("/api/result/latest")[1]
        every, only_a, b_after_2 = (
            get(p)[1] for p in ("/api/results", "/api/results?camera=a", "/api/results?camera=b&since=2")
        )
        status, status_a = get("/api/status")[1], get("/api/status?camera=a")[1]
        unknown = _get(server.web.port, "/api/results?camera=zz")[0]
    finally:
        server.shutdown()
    assert [(latest[c]["camera"], latest[c]["frame_id"]) for c in ("a", "b")] == [("a", 3), ("b", 4)]
    assert newest["camera"] in ("a", "b") and newest in latest.values()
    assert sorted((x["camera"], x["frame_id"]) for x in every) == [("a", 1), ("a", 2), ("a", 3)] + [
        ("b", i) for i in range(1, 5)
    ]
    assert [(x["camera"], x["frame_id"]) for x in only_a] == [("a", 1), ("a", 2), ("a", 3)]
    assert [(x["camera"], x["frame_id"]) for x in b_after_2] == [("b", 3), ("b", 4)]
    assert [c["id"] for c in status["cameras"]] == ["a", "b"] and status["counters"]["inspected"] == 7
    assert status["last_ng"]["camera"] == "b" and status["latest"] in latest.values()
    assert [c["id"] for c in status_a["cameras"]] == ["a"] and status_a["counters"]["inspected"] == 3
    assert status_a["latest"]["camera"] == "a" and status_a["last_ng"] is None
    assert unknown == 404
