"""Inputs: which source each --source value makes, a real FFmpeg stream (UDP, from a local file)
inspected live by serve, and the one-line errors for what this OpenCV cannot read (gst:, csi://
without GStreamer)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import cv2
import pytest

from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.__main__ import main as serve_main
from runtime.serve.frames.folders import FolderSource
from runtime.serve.frames.sources import CaptureSource, csi_pipeline, open_source
from tests.controlled import CATEGORY, part

GSTREAMER = bool(re.search(r"^\s*GStreamer:\s+YES", cv2.getBuildInformation(), re.M))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """20 parts as an MJPEG AVI, every fourth with a red defect."""
    path = tmp_path_factory.mktemp("video") / "parts.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for i in range(20):
        writer.write(part(red_box=(96, 64, 144, 112) if i % 4 == 3 else None))
    writer.release()
    return path


@pytest.mark.parametrize(
    "spec, target, api",
    [
        ("v4l2:///dev/video2", "/dev/video2", cv2.CAP_V4L2),
        ("udp://127.0.0.1:5000", "udp://127.0.0.1:5000", cv2.CAP_FFMPEG),
        ("rtmp://camera.local/live/line1", "rtmp://camera.local/live/line1", cv2.CAP_FFMPEG),
        (
            "srt://camera.local:9000?mode=caller&latency=200",
            "srt://camera.local:9000?mode=caller&latency=200",
            cv2.CAP_FFMPEG,
        ),
        ("rtsp://camera.local/stream", "rtsp://camera.local/stream", cv2.CAP_FFMPEG),
        ("/dev/video0", "/dev/video0", cv2.CAP_ANY),
        ("3", 3, cv2.CAP_ANY),
    ],
)
def test_live_sources_are_passed_to_the_right_backend(spec, target, api):
    source = open_source(spec)
    assert isinstance(source, CaptureSource) and source.live
    assert (source.target, source.api, source.spec) == (target, api, spec)


def test_file_urls_are_files_and_folders(video, tmp_path):
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", part())[1].tobytes())
    folder = open_source(f"file://{tmp_path}")
    assert isinstance(folder, FolderSource) and not folder.live
    recording = open_source(f"file://{video}")
    assert isinstance(recording, CaptureSource) and not recording.live and recording.target == str(video)
    spaced = tmp_path / "a b"
    spaced.mkdir()
    (spaced / "x.png").write_bytes(b"")
    assert isinstance(open_source(f"file://{str(spaced).replace(' ', '%20')}"), FolderSource)


def test_the_csi_pipeline_is_jetsons_argus_camera_in_bgr():
    assert csi_pipeline("csi://1?width=1280&height=720&fps=60&flip=2") == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=60/1 ! "
        "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("foo://x", "unknown scheme foo://; known: file://, v4l2://"),
        ("v4l2://video0", "use v4l2:///dev/videoN"),
        ("csi://left", "use csi://N[?width=W&height=H&fps=F&flip=M]"),
        ("csi://0?zoom=2", "use csi://N[?width=W&height=H&fps=F&flip=M]"),
        ("file:///no/such/folder", "neither a camera index, a URL, a file nor a folder"),
    ],
)
def test_bad_source_values_are_refused_at_start_in_one_line(controlled, tmp_path, capsys, spec, message):
    code = serve_main(["--bundle", str(controlled), "--source", spec, "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.skipif(GSTREAMER, reason="this OpenCV has GStreamer: the gst: test below runs a real pipeline instead")
@pytest.mark.parametrize("spec", ["gst:videotestsrc num-buffers=5", "csi://0"])
def test_gstreamer_sources_without_gstreamer_name_the_fix(controlled, tmp_path, capsys, spec):
    code = serve_main(["--bundle", str(controlled), "--source", spec, "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "needs OpenCV built with GStreamer" in err[0] and "GStreamer: NO" in err[0]
    assert "opencv-python-headless" in err[0] and "apt-get install python3-opencv" in err[0]


@pytest.mark.skipif(not GSTREAMER, reason="this OpenCV has no GStreamer (the error is tested above)")
def test_a_gst_pipeline_delivers_bgr_frames():
    source = open_source("gst:videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48")
    source.open()
    try:
        ok, image, _ = source.read()
    finally:
        source.close()
    assert ok and image.shape == (48, 64, 3)


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_ffmpeg_udp_stream_served_from_a_file_is_inspected_live(controlled, video, tmp_path):
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.fail("ffmpeg is not installed: .ci/run installs Debian's package (apt-get install ffmpeg)")
    url = f"udp://127.0.0.1:{_udp_port()}"
    send = ["-re", "-stream_loop", "-1", "-i", str(video), "-c:v", "mpeg2video", "-g", "1", "-q:v", "3"]
    stream = subprocess.Popen([ffmpeg, "-nostdin", "-loglevel", "error", *send, "-f", "mpegts", f"{url}?pkt_size=1316"])
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    settings = Settings.of(
        source=url, bundle=controlled, category=CATEGORY, port=0, explain=False, results=tmp_path / "results.jsonl"
    )
    try:
        server = Server(settings, detector=detector).start()
        try:
            deadline = time.time() + 60
            while not settings.serve.results.exists() or len(settings.serve.results.read_text().splitlines()) < 5:
                assert time.time() < deadline and not server.stop.is_set(), "no five lines from the UDP stream"
                time.sleep(0.1)
            assert server.source.live and server.ready()[0]
        finally:
            server.shutdown()
    finally:
        stream.terminate()
        stream.wait(10)
    lines = [json.loads(x) for x in settings.serve.results.read_text().splitlines()]
    assert all(x["source"] == url and x["label"] in ("OK", "NG") and "file" not in x for x in lines)
    assert [x["frame_id"] for x in lines] == sorted(x["frame_id"] for x in lines)
    assert [x["time"] for x in lines] == sorted(x["time"] for x in lines)
