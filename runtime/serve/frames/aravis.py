"""GigE Vision and USB3 Vision cameras through Aravis: gige://CAMERA-ID and u3v://CAMERA-ID.

CAMERA-ID is what Aravis calls the device (`arv-tool-0.8` lists them: vendor-serial,
the serial number, or the camera's IP address); empty (gige://) takes the first camera
found. Exposure, gain, pixel format and trigger come from the settings (camera_*) and
are set at every (re)connection. Like every live source the camera is reopened with
backoff when lost (its heartbeat fails, its stream breaks).

Triggers (camera_trigger): off, the camera runs free; software, the camera waits in
GenICam TriggerMode On / TriggerSource Software and each serve trigger (HTTP, MQTT)
fires TriggerSoftware, so that its frame is exposed after the trigger; a line (Line0,
Line1, ...), the camera's hardware trigger: every frame it sends is a part, so none is
dropped (capture waits for the inspector; Aravis's buffers hold what comes meanwhile).

Aravis's Python bindings are GObject introspection from the system, not a wheel:
`apt-get install gir1.2-aravis-0.8 python3-gi`, and a venv that sees them
(`python3 -m venv --system-site-packages`, or PYTHONPATH=/usr/lib/python3/dist-packages).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .sources import FrameSource

log = logging.getLogger("lineside.serve")

# GenICam pixel format -> (numpy dtype, channels, OpenCV conversion to BGR or None)
PIXEL_FORMATS = {
    "Mono8": (np.uint8, 1, cv2.COLOR_GRAY2BGR),
    "Mono16": (np.uint16, 1, cv2.COLOR_GRAY2BGR),
    "RGB8": (np.uint8, 3, cv2.COLOR_RGB2BGR),
    "RGB8Packed": (np.uint8, 3, cv2.COLOR_RGB2BGR),
    "BGR8": (np.uint8, 3, None),
    "BGR8Packed": (np.uint8, 3, None),
    "BayerRG8": (np.uint8, 1, cv2.COLOR_BayerRGGB2BGR),
    "BayerGR8": (np.uint8, 1, cv2.COLOR_BayerGRBG2BGR),
    "BayerGB8": (np.uint8, 1, cv2.COLOR_BayerGBRG2BGR),
    "BayerBG8": (np.uint8, 1, cv2.COLOR_BayerBGGR2BGR),
}
BUFFERS = 8  # frames Aravis may hold for us
POP_US = 200_000  # read() returns this often without a frame, so that capture can stop
FRAME_RETENTION_US = 1_000_000  # how long Aravis waits for a frame's last packets (its default: 100 ms)


def _aravis(spec: str):
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as e:
        raise ValueError(
            f"--source {spec!r} needs Aravis's Python bindings ({e}): apt-get install "
            "gir1.2-aravis-0.8 python3-gi, and a venv made with --system-site-packages (or "
            "PYTHONPATH=/usr/lib/python3/dist-packages)"
        ) from e
    return Aravis


def to_bgr(data: bytes, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A camera buffer -> HxWx3 BGR (uint8, or uint16 for Mono16), a copy that outlives the buffer."""
    dtype, channels, conversion = PIXEL_FORMATS[pixel_format]
    shape = (height, width, channels) if channels > 1 else (height, width)
    image = np.frombuffer(data, dtype, count=width * height * channels).reshape(shape)
    return cv2.cvtColor(image, conversion) if conversion is not None else image.copy()


class AravisSource(FrameSource):
    """A GenICam camera over GigE Vision or USB3 Vision, configured from ServeSettings' camera_* fields."""

    live = True

    def __init__(self, spec: str, settings):
        super().__init__(spec)
        self.aravis = _aravis(spec)
        self.camera_id = spec.split("://", 1)[1] or None
        self.exposure_us, self.gain_db = settings.camera_exposure_us, settings.camera_gain_db
        self.pixel_format, self.trigger = settings.camera_pixel_format, settings.camera_trigger
        if self.pixel_format and self.pixel_format not in PIXEL_FORMATS:
            raise ValueError(
                f"setting camera_pixel_format: {self.pixel_format!r}; lineside reads {', '.join(PIXEL_FORMATS)}"
            )
        self.camera = self.stream = self._watch = None
        self.format = ""  # the camera's pixel format, read at open
        self.lost = False
        self.incomplete = 0  # frames sent incomplete since start (capture counts them; free-running: skipped)
        self._told = 0  # of those, the ones the log has counted already

    @property
    def waits(self) -> bool:
        """A hardware-triggered frame is a part: each one waits for the inspector."""
        return self.trigger not in ("off", "software")

    def probe(self) -> None:
        """A camera that is there now must take the settings (else refused at start); one not found is waited for."""
        try:
            self.open()
        except ConnectionError as e:
            log.warning("%s; serve will keep trying", e)
        finally:
            self.close()

    def open(self) -> None:
        ar = self.aravis
        try:
            self.camera = ar.Camera.new(self.camera_id)
        except Exception as e:  # GLib.Error: not found, busy, unreachable
            raise ConnectionError(f"camera {self.spec!r}: {e}") from e
        try:
            self._configure()
        except Exception as e:  # GLib.Error: the camera refuses a setting
            self.close()
            raise ValueError(f"camera {self.spec!r} refuses the settings: {e}") from e
        self.lost = False
        self._watch = self.camera.get_device().connect("control-lost", self._control_lost)
        self.stream = self.camera.create_stream(None, None)
        if self.camera.is_gv_device():  # a busy host (inference) must not turn late packets into lost frames
            self.stream.set_property("socket-buffer", ar.GvStreamSocketBuffer.AUTO)
            self.stream.set_property("frame-retention", FRAME_RETENTION_US)
        for _ in range(BUFFERS):
            self.stream.push_buffer(ar.Buffer.new_allocate(self.camera.get_payload()))
        self.camera.start_acquisition()
        log.info(
            "camera %s: %s %s, %s, trigger %s",
            self.spec,
            self.camera.get_vendor_name(),
            self.camera.get_model_name(),
            self.format,
            self.trigger,
        )

    def _configure(self) -> None:
        camera = self.camera
        if camera.is_gv_device() and camera.get_device().get_device_address().to_string().startswith("127."):
            camera.gv_set_stream_options(self.aravis.GvStreamOption.PACKET_SOCKET_DISABLED)  # loopback
        if self.pixel_format:
            camera.set_pixel_format_from_string(self.pixel_format)
        self.format = camera.get_pixel_format_as_string()  # fixed while acquiring: read once, not per frame
        if self.format not in PIXEL_FORMATS:
            raise ValueError(
                f"pixel format {self.format} is not one lineside reads; set "
                f"camera_pixel_format to one of {', '.join(PIXEL_FORMATS)}"
            )
        if self.exposure_us is not None:
            camera.set_exposure_time(self.exposure_us)
        if self.gain_db is not None:
            camera.set_gain(self.gain_db)
        camera.clear_triggers()
        if self.trigger != "off":
            camera.set_trigger("Software" if self.trigger == "software" else self.trigger)

    def _control_lost(self, *_) -> None:
        self.lost = True

    def fire(self) -> bool:
        """TriggerSoftware (camera_trigger = software); False when the camera cannot be reached now."""
        if self.trigger != "software" or self.camera is None or self.lost:
            return self.trigger != "software"
        try:
            self.camera.software_trigger()
        except Exception as e:  # GLib.Error: the camera went away; capture reconnects it
            log.warning("camera %s: software trigger failed: %s", self.spec, e)
            return False
        return True

    def read(self):
        """(True, image, "") per frame; (True, None, "") when none came yet; (False, ...) when the camera is lost."""
        if self.lost or self.stream is None:
            return False, None, "camera control lost (heartbeat)"
        buffer = self.stream.timeout_pop_buffer(POP_US)
        if buffer is None:
            return True, None, ""
        try:
            self.last_time = buffer.get_system_timestamp() / 1e9  # its first packet's arrival, not our read
            status = buffer.get_status()
            if status != self.aravis.BufferStatus.SUCCESS:
                self.incomplete += 1
                if not (self.waits or self.trigger == "software"):
                    return True, None, ""  # free-running: the next frame comes soon
                return True, None, f"camera frame {buffer.get_frame_id()} incomplete ({status.value_nick})"
            image = to_bgr(buffer.get_data(), buffer.get_image_width(), buffer.get_image_height(), self.format)
            return True, image, ""
        finally:
            self.stream.push_buffer(buffer)

    def close(self) -> None:
        """Stop acquisition and let the camera go (its control channel, its stream), for a reconnection or the end."""
        if self.camera is not None:
            try:
                self.camera.stop_acquisition()
            except Exception as e:  # GLib.Error: already gone
                log.debug("camera %s: stop: %s", self.spec, e)
            if self._watch is not None:  # the handler holds this source: without this the camera is never freed
                self.camera.get_device().disconnect(self._watch)
        if self.incomplete > self._told:
            log.warning(
                "camera %s: %d incomplete frames (network or camera too slow?)", self.spec, self.incomplete - self._told
            )
            self._told = self.incomplete
        self.camera = self.stream = self._watch = None
