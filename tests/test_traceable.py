"""Traceable results: every line names its camera, file, place in the recording and part; NG files are named
after the part and their sidecar takes the explanation when it comes; Prometheus in base units."""

from __future__ import annotations

import json
import time
import urllib.request

import cv2
import numpy as np
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.frames.triggers import trigger_fields
from runtime.serve.interfaces.metrics import Metrics, version
from runtime.serve.results.ngstore import NgImageSink, ng_stem
from tests.controlled import CATEGORY, part
from tests.serving import result_lines, wait_for

DEFECT = (96, 64, 144, 112)


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _serve(controlled, detector, tmp_path, source, **kw) -> Server:
    base = dict(source=str(source), bundle=controlled, category=CATEGORY, port=0, explain=False)
    settings = Settings.of(**(base | {"results": tmp_path / "results.jsonl"} | kw))
    return Server(settings, detector=detector).start()


def _run(server: Server) -> list[dict]:
    try:
        server.wait()
    finally:
        server.shutdown()
    return result_lines(server)


def test_folder_lines_name_camera_file_index_and_the_part_from_the_file_name(controlled, detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    names = ["lot7_SN-0001.png", "lot7_SN-0002.png", "lot7_SN-0003.png", "unnamed.png"]
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), part(red_box=DEFECT if i == 1 else None))
    (folder / "lot7_SN-0002b.png").write_bytes(b"\x89PNG broken")  # sorted between 0002 and 0003
    server = _serve(
        controlled,
        detector,
        tmp_path,
        folder,
        camera_id="press-2",
        part_id_pattern=r"SN-(\d+)",
        save_ng=tmp_path / "ng",
    )
    lines = _run(server)
    files = sorted(p.name for p in folder.iterdir())
    assert [x["file"] for x in lines] == files and [x["frame_index"] for x in lines] == list(range(5))
    assert {x["camera"] for x in lines} == {"press-2"} and {x["source"] for x in lines} == {str(folder)}
    assert [x.get("part_id") for x in lines] == ["0001", "0002", "0002", "0003", None]
    broken = lines[2]
    assert broken["label"] == "ERROR" and broken["file"] == "lot7_SN-0002b.png" and broken["frame_index"] == 2
    ng = [x for x in lines if x["label"] == "NG"]
    assert [x["file"] for x in ng] == ["lot7_SN-0002.png"]
    image = tmp_path / "ng" / f"press-2_0002_{ng[0]['run']}_{ng[0]['frame_id']:08d}.jpg"
    assert image.is_file() and json.loads(image.with_suffix(".json").read_text())["part_id"] == "0002"


def test_video_lines_carry_the_frame_index_and_ng_files_the_video_name(controlled, detector, tmp_path):
    video = tmp_path / "belt 3 (night).avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (256, 256))
    for i in range(4):
        writer.write(part(red_box=DEFECT if i == 2 else None))
    writer.release()
    lines = _run(_serve(controlled, detector, tmp_path, video, save_ng=tmp_path / "ng"))
    assert [x["frame_index"] for x in lines] == [0, 1, 2, 3] and all("file" not in x for x in lines)
    assert all("camera" not in x and "part_id" not in x for x in lines)  # unnamed camera, no pattern
    ng = [x for x in lines if x["label"] == "NG"]
    assert [x["frame_index"] for x in ng] == [2]
    saved = [p.name for p in (tmp_path / "ng").glob("*.jpg")]
    assert saved == [f"belt-3-night-_{ng[0]['run']}_{ng[0]['frame_id']:08d}.jpg"]  # the name made safe


def test_the_trigger_names_the_part_over_the_file_name(controlled, detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"SN-{i}.png"), part())
    server = _serve(
        controlled, detector, tmp_path, folder, trigger="software", part_id_pattern=r"SN-\d+", camera_id="cam"
    )
    try:
        bodies = [b'{"id": "t-1", "part_id": "PCB-77"}', b"t-2", b'{"part_id": 12}']
        for body in bodies:
            request = urllib.request.Request(f"http://127.0.0.1:{server.web.port}/api/trigger", body, method="POST")
            with urllib.request.urlopen(request, timeout=5) as r:
                assert r.status == 202
        wait_for(lambda: len(result_lines(server)) == 3, 30, "three triggered inspections")
    finally:
        server.shutdown()
    lines = result_lines(server)
    assert [x["part_id"] for x in lines] == ["PCB-77", "SN-1", "12"]  # the trigger's word, else the file's
    assert [x["trigger_id"] for x in lines][:2] == ["t-1", "t-2"] and [x["frame_index"] for x in lines] == [0, 1, 2]


def test_trigger_part_ids_are_checked_like_ids():
    assert trigger_fields(b'{"id": "a", "part_id": "B-1"}') == ("a", "B-1")
    assert trigger_fields(b"", "q", "p-9") == ("q", "p-9") and trigger_fields(b"plain") == ("plain", None)
    for bad, why in [(b'{"part_id": ["x"]}', "part_id must be a string"), (b'{"part_id": "a\\nb"}', "printable")]:
        with pytest.raises(ValueError, match=why):
            trigger_fields(bad)


def _ng_record(run: str, frame_id: int, **head) -> dict:
    return {"run": run, "frame_id": frame_id, "label": "NG", "source": "/data/line", **head}


def test_ng_names_are_safe_and_say_what_failed():
    assert ng_stem(_ng_record("R", 3, camera="left", part_id="../../etc/passwd")) == "left_etc-passwd_R_00000003"
    assert ng_stem(_ng_record("R", 4, file="cell 12.png", frame_index=3)) == "cell-12_R_00000004"
    assert ng_stem(_ng_record("R", 5)) == "R_00000005"  # a camera without file or part
    assert len(ng_stem(_ng_record("R", 6, part_id="x" * 500))) == 64 + len("_R_00000006")


def test_the_sidecar_takes_the_explanation_when_it_arrives_and_stays_under_the_cap(tmp_path):
    metrics = Metrics()
    sink = NgImageSink(tmp_path / "ng", 1.0, metrics, 16)
    sink.start()
    record = _ng_record("R1", 1, camera="c", part_id="P1", explanation={"text": "rules", "origin": "rules"})
    sink.offer(record, part(red_box=DEFECT))
    explained = {"text": "a red scratch near the centre", "origin": "smollm2.gguf", "regions": []}
    line = {k: record[k] for k in ("run", "frame_id", "source", "camera", "part_id")}
    sink.offer(line | {"label": "EXPLANATION", "explanation": explained, "explained_at": 12.5}, None)
    sink.offer(line | {"camera": "other", "label": "EXPLANATION", "explanation": {"text": "not mine"}}, None)
    sink.close()
    sidecar = tmp_path / "ng" / "c_P1_R1_00000001.json"
    data = json.loads(sidecar.read_text())
    assert data["explanation"] == explained and data["explained_at"] == 12.5 and data["label"] == "NG"
    assert sorted(p.name for p in (tmp_path / "ng").iterdir()) == [
        ".lineside-ng-index.jsonl",
        "c_P1_R1_00000001.jpg",
        "c_P1_R1_00000001.json",
    ]
    # the index knows the sidecar as it is now, so the cap still removes it in its turn
    later = NgImageSink(tmp_path / "ng", 0.000_001, Metrics(), 16)
    later.start()
    later.offer(_ng_record("R2", 1), part())
    later.close()
    assert not sidecar.exists() and not sidecar.with_suffix(".jpg").exists()


def test_a_sidecar_a_user_replaced_is_not_overwritten(tmp_path):
    sink = NgImageSink(tmp_path / "ng", 1.0, Metrics(), 16)
    sink.start()
    sink.offer(_ng_record("R1", 1), part())
    wait_for(lambda: (tmp_path / "ng" / "R1_00000001.json").exists(), 10, "the NG sidecar")
    time.sleep(0.05)
    (tmp_path / "ng" / "R1_00000001.json").write_text('{"mine": true}')
    sink.offer({"run": "R1", "frame_id": 1, "label": "EXPLANATION", "explanation": {"text": "x"}}, None)
    sink.close()
    assert json.loads((tmp_path / "ng" / "R1_00000001.json").read_text()) == {"mine": True}
    assert not [p for p in (tmp_path / "ng").iterdir() if p.suffix == ".tmp"]


def test_prometheus_is_in_seconds_with_a_camera_label_and_build_info(controlled, detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), part())
    server = _serve(controlled, detector, tmp_path, folder, camera_id="east")
    try:
        server.wait()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.web.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
    assert f'lineside_build_info{{bundle_id="{detector.bundle_id}",version="{version()}"}} 1.0' in text
    assert version() not in ("", "unknown") and detector.bundle_id
    assert 'lineside_frames_inspected_total{camera="east"} 3.0' in text
    assert "lineside_stage_ms" not in text and 'lineside_stage_seconds_count{camera="east",stage="total"} 3.0' in text
    value = server.metrics.registry.get_sample_value
    total = value("lineside_stage_seconds_sum", {"camera": "east", "stage": "total"})
    times = [x["timings_ms"]["total"] / 1000 for x in result_lines(server)]
    assert total == pytest.approx(sum(times), abs=1e-4) and 0 < total < 60  # seconds (lines round to 0.01 ms)
    assert value("lineside_stage_seconds_bucket", {"camera": "east", "stage": "total", "le": "30.0"}) == 3


def test_the_explainer_s_line_reaches_the_ng_sidecar_of_its_camera(controlled, detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"board-{i}.png"), part(red_box=DEFECT if i == 1 else None))
    server = _serve(controlled, detector, tmp_path, folder, camera_id="c1", explain=True, save_ng=tmp_path / "ng")
    server.wait()
    wait_for(lambda: any(x["label"] == "EXPLANATION" for x in result_lines(server)), 60, "the EXPLANATION line")
    server.shutdown()
    line = next(x for x in result_lines(server) if x["label"] == "EXPLANATION")
    sidecar = tmp_path / "ng" / f"c1_board-1_{line['run']}_{line['frame_id']:08d}.json"
    data = json.loads(sidecar.read_text())
    assert data["label"] == "NG" and data["explained_at"] == line["explained_at"]
    assert data["explanation"] == line["explanation"] and data["explanation"]["text"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"camera_id": "line/1"}, "setting camera_id: 'line/1' must be 1 to 64 letters"),
        ({"part_id_pattern": "SN-(\\d+"}, "setting part_id_pattern: 'SN-(\\\\d+' is no regular expression"),
    ],
)
def test_bad_camera_ids_and_part_patterns_are_refused_naming_the_setting(values, message):
    with pytest.raises(ValueError) as e:
        Settings.of(**values)
    assert message in str(e.value)


L_CODES = ("0001101", "0011001", "0010011", "0111101", "0100011", "0110001", "0101111", "0111011", "0110111", "0001011")
PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")


def ean13(twelve: str) -> tuple[str, np.ndarray]:
    """The 13 digits (with their check digit) and an HxW uint8 image of their EAN-13 bars, drawn from the standard."""
    digits = [int(c) for c in twelve]
    digits.append((10 - sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10) % 10)
    right = ["".join("1" if b == "0" else "0" for b in code) for code in L_CODES]
    left = "".join(L_CODES[d] if p == "L" else right[d][::-1] for d, p in zip(digits[1:7], PARITY[digits[0]]))
    bits = "101" + left + "01010" + "".join(right[d] for d in digits[7:]) + "101"
    row = np.array([0 if b == "1" else 255 for b in "0" * 12 + bits + "0" * 12], np.uint8)
    return "".join(map(str, digits)), np.repeat(np.tile(row, (150, 1)), 2, axis=1)  # modules 2 px wide


def qr(text: str) -> np.ndarray:
    code = cv2.resize(cv2.QRCodeEncoder.create().encode(text), None, fx=5, fy=5, interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(code, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=255)


def _with_code(code: np.ndarray, defective: bool = False) -> np.ndarray:
    frame = np.full((360, 480, 3), 128, np.uint8)
    frame[40 : 40 + code.shape[0], 20 : 20 + code.shape[1]] = code[..., None]  # (not at the very edge)
    if defective:
        frame[250:300, 300:380] = (0, 0, 255)
    return frame


def test_the_part_id_is_read_from_a_qr_code_or_a_barcode_in_the_frame(controlled, detector, tmp_path):
    number, bars = ean13("400638133393")
    for kind, code, expected in (("qr", qr("SN-0042/B"), "SN-0042/B"), ("barcode", bars, number)):
        folder = tmp_path / kind
        folder.mkdir()
        cv2.imwrite(str(folder / "lot1_SN-0001.png"), _with_code(code))
        cv2.imwrite(str(folder / "lot1_SN-0002.png"), part())  # no code: the file name's part id
        server = _serve(controlled, detector, tmp_path / kind, folder, part_id_pattern=r"SN-(\d+)", part_id_code=kind)
        lines = _run(server)
        assert [x["part_id"] for x in lines] == [expected, "0002"], kind


def test_the_trigger_s_part_id_wins_over_a_code_in_the_frame(controlled, detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), _with_code(qr(f"CODE-{i}")))
    server = _serve(controlled, detector, tmp_path, folder, trigger="software", part_id_code="qr")
    try:
        for body in (b'{"part_id": "PLC-1"}', b"t-2"):
            request = urllib.request.Request(f"http://127.0.0.1:{server.web.port}/api/trigger", body, method="POST")
            urllib.request.urlopen(request, timeout=5).close()
        wait_for(lambda: len(result_lines(server)) == 2, 30, "two triggered inspections")
    finally:
        server.shutdown()
    assert [x["part_id"] for x in result_lines(server)] == ["PLC-1", "CODE-1"]
