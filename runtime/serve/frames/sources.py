"""Frame sources: cameras, streams, video files and image folders, each input treated as hostile.

Live sources (cameras, streams) are reopened when lost. Files and folders are
not live: every frame of them is inspected. Whatever can be known to be wrong
at start is refused at start with one line (a file that is not a video, a name
OpenCV's video reader would crash on, a folder without images); whatever goes
wrong later with one file (corrupt, a decompression bomb, a FIFO, a name that
is not UTF-8) becomes a frame without an image, whose note names the file, and
the source goes on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np

from ...detect.frames import printable
from ...settings import MAX_IMAGE_PIXELS

log = logging.getLogger("lineside.serve")

# Stream URLs passed to OpenCV's FFmpeg backend as they are (rtsp and http(s) among them, as always).
FFMPEG_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "srt", "rtp", "tcp", "http", "https")
APPSINK = "appsink drop=true max-buffers=1 sync=false"  # the newest frame only: a live source never queues


@dataclass
class Frame:
    frame_id: int
    time: float  # unix seconds at capture
    image: np.ndarray | None  # HxWx3 BGR as OpenCV reads it; None when the frame could not be decoded
    source: str
    note: str = ""  # why image is None
    file: str = ""  # the image file it came from (folder sources), printable whatever bytes its name holds
    trigger_id: str | None = None  # the trigger this frame was inspected for (trigger = software)
    trigger_time: float | None = None  # unix seconds when that trigger arrived
    index: int | None = None  # 0-based place in its video file or image folder (None for live sources)
    part_id: str | None = None  # the part's id: from the trigger, a code in the frame, or the file name
    part_from: str = ""  # where part_id came from: "trigger", "code" or "file name" ("" without one)
    camera: str = ""  # the id of the camera it came from ("" when serve runs one unnamed camera)


class FrameSource:
    """open() / read() -> (ok, image, note) / close(). `live` says whether frames wait for us."""

    live = True
    last_file = ""  # the file the last read() came from, if the source reads files
    last_time: float | None = None  # when the last read()'s frame was taken (unix seconds), if the source knows
    last_index: int | None = None  # the last read()'s 0-based place in a video file or folder (recordings only)
    incomplete = 0  # frames received broken since the source was made (a GigE frame missing packets), if it knows

    @property
    def waits(self) -> bool:
        """Frames wait for the inspector (every one inspected) instead of replacing an unread one."""
        return not self.live

    def fire(self) -> bool:
        """Make the source take a frame now (a camera's software trigger); False when it cannot now."""
        return True

    def __init__(self, spec: str):
        self.spec = spec

    def probe(self) -> None:
        """Refuse a source that can never deliver (ValueError naming it); live sources are tried later."""

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[bool, np.ndarray | None, str]:
        """(source still delivering, image or None, note). False means: reopen (or finished).

        (True, None, note) is a frame that could not be decoded, and `note` says why; (True, None, "")
        is no frame yet (a triggered camera waiting), which is not a frame at all.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass


class CaptureSource(FrameSource):
    """cv2.VideoCapture over a device index, /dev/videoN, a video file, a stream URL or a GStreamer pipeline.

    `api` is OpenCV's backend (cv2.CAP_V4L2, CAP_FFMPEG, CAP_GSTREAMER; CAP_ANY lets it choose).
    """

    def __init__(self, spec: str, target, live: bool, api: int = cv2.CAP_ANY):
        super().__init__(spec)
        self.api = api
        if isinstance(target, str) and not _utf8(target):
            raise ValueError(
                f"--source {printable(spec)!r}: the name is not UTF-8, which OpenCV's video reader "
                "cannot open (it crashes); rename the file"
            )
        self.target, self.live, self.cap = target, live, None
        self.declared, self.delivered = 0, 0  # frames the file says it holds, frames read since open

    def probe(self) -> None:
        """A file must open and give one frame: a 0-byte, text or truncated file is not a camera to wait for."""
        if self.live:
            return
        cap = cv2.VideoCapture(self.target, self.api)
        try:
            if not cap.isOpened() or not cap.read()[0]:
                raise ValueError(
                    f"--source {self.spec!r} is not a video OpenCV can read (empty, truncated or another kind of file)"
                )
        finally:
            cap.release()

    def open(self) -> None:
        self.cap = cv2.VideoCapture(self.target, self.api)
        if not self.cap.isOpened():
            self.cap.release()
            self.cap = None
            raise ConnectionError(f"cannot open source {self.spec!r}")
        self.declared, self.delivered = int(max(0.0, self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)), 0

    def read(self):
        ok, image = self.cap.read() if self.cap is not None else (False, None)
        if ok:
            self.delivered += 1
            self.last_index = None if self.live else self.delivered - 1
            return True, image, ""
        if not self.live and self.delivered < self.declared:
            log.warning(
                "video %s ended after %d readable frames of the %d it declares (truncated or corrupt?)",
                self.spec,
                self.delivered,
                self.declared,
            )
        return False, None, "end of stream or read failure"

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _backend(name: str, spec: str, fix: str) -> None:
    """Refuse `spec` in one line when this OpenCV was built without video backend `name`, saying how to get it."""
    if not re.search(rf"^\s*{name}:\s+YES", cv2.getBuildInformation(), re.M):
        raise ValueError(
            f"--source {printable(spec)!r} needs OpenCV built with {name}, and this one is not "
            f"(cv2.getBuildInformation() says {name}: NO); {fix}"
        )


GSTREAMER_FIX = (
    "use an OpenCV built with it, in place of opencv-python-headless (whose wheels never are): on a "
    "Jetson JetPack's own (deploy/Dockerfile.jetson, or a venv made with --system-site-packages and "
    "without the cpu/gpu extras), elsewhere apt-get install python3-opencv the same way"
)


def csi_pipeline(spec: str) -> str:
    """csi://N[?width=W&height=H&fps=F&flip=M] -> the nvarguscamerasrc pipeline of Jetson's CSI camera N, BGR out."""
    url = urlparse(spec)
    options = {k: v[-1] for k, v in parse_qs(url.query).items()}
    values = {"width": 1920, "height": 1080, "fps": 30, "flip": 0}
    unknown = sorted(set(options) - set(values))
    if not url.netloc.isdigit() or unknown or not all(options[k].isdigit() for k in options):
        raise ValueError(f"--source {spec!r}: use csi://N[?width=W&height=H&fps=F&flip=M] with whole numbers")
    v = values | {k: int(x) for k, x in options.items()}
    return (
        f"nvarguscamerasrc sensor-id={url.netloc} ! video/x-raw(memory:NVMM),width={v['width']},"
        f"height={v['height']},framerate={v['fps']}/1 ! nvvidconv flip-method={v['flip']} ! "
        f"video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! {APPSINK}"
    )


def _device(spec: str) -> CaptureSource:
    """v4l2:///dev/videoN: a V4L2 device through OpenCV's V4L2 backend."""
    device = unquote(urlparse(spec).path)
    if not re.fullmatch(r"/dev/[\w./-]+", device):
        raise ValueError(f"--source {spec!r}: use v4l2:///dev/videoN")
    return CaptureSource(spec, device, live=True, api=cv2.CAP_V4L2)


def _url(spec: str, scheme: str) -> FrameSource:
    """A source given as a URL: v4l2, csi, the FFmpeg protocols, file."""
    if scheme == "v4l2":
        return _device(spec)
    if scheme == "csi":
        pipeline = csi_pipeline(spec)
        _backend("GStreamer", spec, GSTREAMER_FIX)
        return CaptureSource(spec, pipeline, live=True, api=cv2.CAP_GSTREAMER)
    if scheme in FFMPEG_SCHEMES:  # passed through as it is: FFmpeg reads it
        _backend("FFMPEG", spec, "install opencv-python-headless (the cpu/gpu extras), whose wheels carry FFmpeg")
        return CaptureSource(spec, spec, live=True, api=cv2.CAP_FFMPEG)
    known = ", ".join(f"{s}://" for s in ("file", "v4l2", "csi", "gige", "u3v", *FFMPEG_SCHEMES))
    raise ValueError(f"--source {printable(spec)!r}: unknown scheme {scheme}://; known: {known}, gst:PIPELINE")


def open_source(spec: str, max_pixels: int = MAX_IMAGE_PIXELS, decode_threads: int = 2, camera=None) -> FrameSource:
    """The right source for a --source value; a missing file or folder is refused at once.

    A camera index, /dev/videoN, v4l2:///dev/videoN, csi://N (Jetson), gst:PIPELINE (GStreamer),
    an FFmpeg URL (rtsp, rtmp, udp, srt, rtp, tcp, http(s): passed through), gige:// or u3v://
    (a GenICam camera through Aravis, set up from `camera`, the ServeSettings), a video file or an
    image folder (a path, or file://PATH).
    """
    if re.fullmatch(r"\d+", spec):
        return CaptureSource(spec, int(spec), live=True)
    if spec.startswith("/dev/video"):
        return CaptureSource(spec, spec, live=True)
    if spec.startswith("gst:"):
        _backend("GStreamer", spec, GSTREAMER_FIX)
        pipeline = spec[4:].strip()
        if "appsink" not in pipeline:  # a pipeline that ends in a raw video source: OpenCV reads BGR from appsink
            pipeline += f" ! videoconvert ! video/x-raw,format=BGR ! {APPSINK}"
        return CaptureSource(spec, pipeline, live=True, api=cv2.CAP_GSTREAMER)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", spec)
    if scheme and scheme[1].lower() in ("gige", "u3v"):
        from .aravis import AravisSource  # GObject introspection, only for these cameras

        return AravisSource(spec, camera)
    if scheme and scheme[1].lower() != "file":
        return _url(spec, scheme[1].lower())
    path = Path(unquote(spec[7:]) if scheme else spec)
    if path.is_dir():
        from .folders import FolderSource  # it builds on FrameSource, above

        return FolderSource(spec, path, max_pixels, decode_threads)
    if path.is_file():
        return CaptureSource(spec, str(path), live=False)
    raise FileNotFoundError(f"--source {printable(spec)!r} is neither a camera index, a URL, a file nor a folder")
