"""Every setting of lineside, declared once: type, default, bounds and help.

Four sections, one per concern: `JobSettings` (what to inspect), `DetectorSettings`
(graphs, sessions, frames, scoring, regions), `AgentSettings` (the prompt agent
and its language model) and `ServeSettings` (sources, outputs, HTTP). The
command-line flags of serve, detect and prompts, the `--config` JSON file and the
`LINESIDE_*` environment variables are all made from these fields by
`runtime.options`, so a setting added here is reachable everywhere at once.
Bounds are checked when a section is built, in one line naming the setting; a
`Result` carries the detector settings that produced it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from .precisions import PRECISIONS
from .providers import LOCAL, check_providers, is_triton
from .sections import Section, setting, unit

PROVIDERS = LOCAL  # onnxruntime's; a Triton server is named by URL (runtime/providers.py)
MAX_IMAGE_PIXELS = 50_000_000  # 50 MP: above every industrial camera we target, far below a decompression bomb
MQTT_QUEUE_MAX = 60_000  # below the 65,535 message ids one MQTT client can have outstanding


@dataclass(frozen=True)
class JobSettings(Section):
    bundle: Path = setting(Path("bundles/default"), "bundle folder (python -m export ... --out DIR)")
    category: str = setting("part", "what the parts are, e.g. solar_cell or metal_nut")
    references: Path | None = setting(None, "folder of known-good images (few-shot branch)")
    calibrate: Path | None = setting(
        None,
        "folder of known-good images (not the references) that sets the NG "
        "threshold for false_alarm_target; unset: the threshold setting",
    )
    false_alarm_target: float = setting(
        0.01,
        "false-alarm rate on good parts that calibration aims at (--calibrate DIR, --calibrate-teach)",
        above=0.0,
        high=0.5,
    )
    false_alarm_mode: str = setting(
        "expected",
        "what calibration promises: expected (the target on average over calibrations) or guarantee "
        "(at most the target with false_alarm_confidence, distribution-free; needs enough good images, "
        "59 for a 0.05 target at 0.95 confidence, and refuses with fewer)",
        choices=("expected", "guarantee"),
    )
    false_alarm_confidence: float = setting(
        0.95,
        "guarantee mode: the probability that the line's false-alarm rate is at or below the target",
        above=0.0,
        high=0.999,
    )

    def check(self) -> None:
        if not str(self.category).strip():
            raise ValueError(f"setting category: {self.category!r} is empty; name the parts, e.g. metal_nut")


@dataclass(frozen=True)
class DetectorSettings(Section):
    precision: str = setting(
        "fp32",
        "graph precision to run; auto: per graph, the fastest that holds its parity "
        "bound on this machine (timed at start)",
        choices=(*PRECISIONS, "auto"),
    )
    allow_unverified_precision: bool = setting(
        False,
        "run an fp16/int8 graph even when it is outside its parity bound, in the manifest or measured here (warns)",
    )
    precision_cache_dir: Path | None = setting(
        None, "where the parity figures measured on this machine are kept (default ~/.cache/lineside/precision)"
    )
    providers: tuple[str, ...] = setting(
        ("cpu",),
        "onnxruntime providers in order (tensorrt, cuda, cpu), or one Triton server that runs every graph: "
        "triton://HOST:PORT[?protocol=grpc|http&timeout=SECONDS] (pip install 'lineside[triton]')",
    )
    strict_providers: bool = setting(
        False,
        "refuse to start when a requested accelerator (tensorrt, cuda) "
        "is not obtained, instead of running on the next provider",
    )
    threads: int | None = setting(None, "intra-op threads per session (unset: onnxruntime decides)", low=1)
    trt_cache_dir: Path | None = setting(None, "where TensorRT engines are built and cached")
    trt_fp16: bool = setting(False, "let TensorRT build fp16 engines (faster on GPUs with tensor cores)")
    io_binding: bool | None = setting(
        None,
        "bind graph inputs and outputs to the device: a frame is uploaded once, "
        "SAM's embeddings stay on the GPU; unset: on for CUDA and TensorRT",
    )
    cuda_graph: bool = setting(
        False,
        "capture the static graphs (image encoder, SAM encoder) as CUDA graphs on "
        "CUDA/TensorRT (implies io_binding); off until measured faster on the GPU",
    )
    text_cache_dir: Path | None = setting(None, "text-embedding cache (default ~/.cache/lineside/text)")
    prompt_dir: Path | None = setting(None, "folder of prompt banks CATEGORY.json (default BUNDLE/prompts)")
    max_image_pixels: int = setting(
        MAX_IMAGE_PIXELS, "image files declaring more pixels are refused before decoding", low=1
    )
    input_bits: int = setting(16, "bit depth of uint16 frames; values above it are refused", choices=(10, 12, 14, 16))
    min_frame_side: int = setting(16, "frames with a side shorter than this many pixels are refused", low=1)
    threshold: float = unit(0.5, "image score at or above which a frame is NG")
    logit_scale: float | None = setting(
        None, "CLIP temperature in softmax(scale * [<x,t_n>, <x,t_a>]); unset: the checkpoint's (bundle)", above=0.0
    )
    smoothing_sigma: float = setting(4.0, "Gaussian sigma of the anomaly map, in pixels at 518 px input", low=0.0)
    map_weight: float = unit(
        0.5,
        "language branch: image score = (1 - w) * global image-text score + w * map peak "
        "(references alone: the map peak, no global term)",
    )
    reference_weight: float = unit(0.5, "weight of the reference (few-shot) map when references are given")
    coreset_ratio: float = setting(
        0.1,
        "share of the references' patches searched first (greedy k-center coreset; "
        "the farthest patches then exactly); 1.0: all",
        above=0.0,
        high=1.0,
    )
    nn_index: str = setting(
        "auto",
        "nearest-neighbour search over reference patches: numpy (exact, blocked), faiss "
        "(HNSW, pip install 'lineside[fast]'), auto (faiss on large banks when installed)",
        choices=("auto", "numpy", "faiss"),
    )
    reference_cache_dir: Path | None = setting(
        None,
        "where reference memories are kept by content (default: beside the text cache, ~/.cache/lineside/references)",
    )
    reference_window: int = setting(
        -1,
        "registered parts (cells, boards, labels): compare each patch only with the "
        "references' patches within this many grid cells of its place; 0: anywhere; "
        "-1 (auto): 1 when the references align with each other, else 0",
        low=-1,
    )
    top_fraction: float = setting(
        0.01,
        "the map's part of the image score: the mean of its highest fraction of pixels (0: its maximum)",
        low=0.0,
        high=0.5,
    )
    use_sam: bool = setting(True, "refine suspicious frames with SAM when the bundle has it")
    sam_gate: float = unit(0.4, "SAM runs only when the image score or map maximum reaches this")
    region_threshold: float = unit(0.5, "map value above which pixels form candidate regions")
    min_region_frac: float = unit(0.0005, "smallest region kept, as a fraction of the frame")
    max_region_frac: float = unit(0.5, "largest region kept (larger is the part or the background)")
    max_regions: int = setting(8, "at most this many regions per frame, strongest first", low=1)
    sam_min_iou: float = unit(0.5, "smallest SAM-predicted IoU for a mask to be kept")
    sam_min_mass: float = unit(0.3, "smallest mean anomaly-map value inside a kept mask")
    refine_mix: float = unit(0.5, "refined map = (1 - mix) * map + mix * region score inside masks")

    def check(self) -> None:
        if not self.min_region_frac < self.max_region_frac:
            raise ValueError("settings min_region_frac/max_region_frac must satisfy min < max")
        try:
            check_providers(self.providers)
        except ValueError as e:
            raise ValueError(f"setting providers: {e}") from None
        if any(map(is_triton, self.providers)) and (self.io_binding or self.cuda_graph):
            raise ValueError(
                "settings io_binding/cuda_graph bind buffers on this box's GPU; with a Triton server the "
                "graphs run there: leave them unset"
            )


@dataclass(frozen=True)
class AgentSettings(Section):
    retries: int = setting(3, "language-model answers tried per question before rule-based descriptions", low=1)
    max_prompts: int = setting(8, "defect prompts kept per category at most", low=1)
    merge_cosine: float = unit(0.95, "candidate prompts closer than this (text-embedding cosine) are one prompt")
    fire_bound: float = unit(0.5, "a candidate whose map or score on a normal reference reaches this is dropped")
    max_tokens: int = setting(160, "tokens one language-model answer may take", low=1)
    temperature: float = setting(0.3, "sampling temperature of the language model", low=0.0)
    seed: int = setting(0, "sampling seed of the language model (retries add one)")
    answer_seconds: float = setting(60.0, "time bound of one language-model answer", above=0.0)
    llm_threads: int | None = setting(None, "CPU threads of the language model (unset: llama.cpp decides)", low=1)
    llm_context: int = setting(2048, "context length of the language model, in tokens", low=256)
    explain_tokens: int = setting(
        40,
        "tokens the language model's sentence on an NG frame may take (SmolLM2-135M: about 30 a second on a CPU)",
        low=8,
    )


@dataclass(frozen=True)
class ServeSettings(Section):
    source: str = setting(
        "0",
        "camera index, /dev/videoN, v4l2:///dev/videoN, csi://N, gst:PIPELINE, an FFmpeg "
        "URL (rtsp, rtmp, udp, srt, rtp, tcp, http(s)), a video file, an image folder or file://PATH",
    )
    teach: int = setting(0, "take the first N frames as known-good references", low=0)
    teach_screen: bool = setting(
        True, "refuse taught frames that are empty, blurred or outliers among the taught ones (the TEACH line says why)"
    )
    calibrate_teach: bool = setting(
        False, "set the NG threshold from the taught frames (each scored against the others) for false_alarm_target"
    )
    max_fps: float = setting(0.0, "read at most this many frames per second (0: as fast as they come)", low=0.0)
    loop: bool = setting(False, "restart a video file or folder at its end")
    decode_threads: int = setting(2, "threads decoding image files ahead of inspection (folder sources)", low=1)
    trigger: str = setting(
        "free-run",
        "free-run: inspect every frame (the newest, live); software: one "
        "inspection per trigger (POST /api/trigger, trigger_mqtt)",
        choices=("free-run", "software"),
    )
    trigger_queue: int = setting(
        8,
        "triggers that may wait while the inspector is busy; more are refused (HTTP "
        "429, MQTT TOPIC/refused) and counted",
        low=1,
    )
    trigger_mqtt: str = setting(
        "",
        "MQTT command topic mqtt://HOST:PORT/TOPIC: each message is one trigger "
        '(payload: its id, {"id": ...} or empty); needs trigger=software',
    )
    plc_results: int = setting(
        8,
        "PLC handshake (opcua-server ...&handshake=1, modbus ...&handshake=REGISTER): results held until the "
        "PLC acknowledges each, delivered in order; while this many wait, a PLC trigger is refused",
        low=1,
        high=1000,
    )
    plc_timeout_s: float = setting(
        30.0,
        "PLC handshake: a triggered part with no result after this long is presented as ERROR (reason 3, time-out)",
        above=0.0,
    )
    camera_exposure_us: float | None = setting(
        None,
        "gige:// or u3v:// camera: exposure time in microseconds (GenICam ExposureTime); unset: as it is",
        above=0.0,
    )
    camera_gain_db: float | None = setting(
        None, "gige:// or u3v:// camera: gain in dB (GenICam Gain); unset: as it is", low=0.0
    )
    camera_pixel_format: str = setting(
        "",
        "gige:// or u3v:// camera: GenICam PixelFormat (Mono8, Mono16, RGB8, BGR8, BayerRG8, BayerGR8, BayerGB8, "
        "BayerBG8); empty: as it is",
    )
    camera_trigger: str = setting(
        "off",
        "gige:// or u3v:// camera: off (free-running); software (each trigger fires its TriggerSoftware; needs "
        "trigger=software); or a line such as Line0 (its hardware trigger: every frame it sends is inspected)",
    )
    host: str = setting("127.0.0.1", "HTTP address (127.0.0.1: this box only)")
    port: int = setting(8080, "HTTP port (0: any free port)", low=0, high=65535)
    http_max_connections: int = setting(64, "open HTTP connections at most; more are answered 503", low=1)
    http_read_timeout_s: float = setting(
        10.0, "an HTTP connection that sends no complete request for this long is closed", above=0.0
    )
    show: bool = setting(False, "show the overlay in a window (needs a display and opencv-python)")
    results: Path = setting(Path("lineside-results.jsonl"), "durable log: one JSON line per inspected frame")
    save_ng: Path | None = setting(None, "folder for NG images with JSON sidecars")
    save_ng_mb: float = setting(
        500.0,
        "disk cap of the NG images serve wrote in --save-ng; its oldest go first (other files there are never touched)",
        above=0.0,
    )
    camera_id: str = setting(
        "", "this camera's name in every result line, NG file name and metric label (camera); empty: unnamed"
    )
    part_id_pattern: str = setting(
        "",
        "regular expression searched in each image or video file name; its first group (else the whole match) "
        "is the line's part_id, unless the trigger names the part",
    )
    part_id_code: str = setting(
        "off",
        "read the part id from a code in each inspected frame: qr, barcode (EAN, UPC, Code 128, ...) or off; "
        "over the file name's, under the trigger's",
        choices=("off", "qr", "barcode"),
    )
    cameras: Path | None = setting(
        None,
        "YAML file listing cameras served by this one process (id, source and any serve or job setting each); "
        "README 'Several cameras'",
    )
    sink: tuple[str, ...] = setting(
        (),
        "extra result sink: jsonl:PATH, mqtt://HOST:PORT/TOPIC, http(s)://URL; PLCs (README, PLC outputs): "
        "opcua-server://HOST:PORT/PATH, opcua-write://HOST:PORT?verdict=NODEID, modbus://HOST:PORT?unit=1&coil=0",
    )
    sink_queue: int = setting(256, "records a sink may fall behind before its records are dropped", low=1)
    mqtt_queue: int = setting(
        1000,
        "MQTT records held for a broker that is away (QoS 1); more are dropped (counted)",
        low=1,
        high=MQTT_QUEUE_MAX,
    )
    mqtt_line: str = setting(
        "line1", "this line's name in the MQTT topics PREFIX/LINE/CAMERA/result|status|explanation"
    )
    mqtt_client_id: str = setting("", "MQTT client id; empty: lineside-HOSTNAME-PID")
    mqtt_qos: int = setting(
        1, "MQTT QoS of results (0: lost while the broker is away; 1, 2: queued)", choices=(0, 1, 2)
    )
    mqtt_username: str = setting("", "MQTT user name (or mqtt://USER@HOST/...)")
    mqtt_password: str = setting(
        "", "MQTT password: prefer LINESIDE_MQTT_PASSWORD or mqtt_password_file (never logged)"
    )
    mqtt_password_file: Path | None = setting(None, "file holding the MQTT password (first line)")
    mqtt_ca: Path | None = setting(None, "mqtts://: CA certificate file the broker's certificate must chain to")
    mqtt_cert: Path | None = setting(None, "mqtts://: client certificate file (PEM), for brokers that require one")
    mqtt_key: Path | None = setting(None, "mqtts://: the client certificate's private key (PEM)")
    webhook_retries: int = setting(3, "webhook: re-sends of a record after a 5xx, timeout or connection error", low=0)
    webhook_backoff_s: float = setting(
        0.5, "webhook: first wait before a re-send, doubled each time (random jitter, at most 30 s)", above=0.0
    )
    log_format: str = setting("text", "log lines as text, or json: one JSON object per line", choices=("text", "json"))
    webhook_follow_redirects: bool = setting(
        False, "re-send a webhook POST (same body) to where a 3xx points; off: a redirect is a failed delivery"
    )
    explain: bool = setting(True, "explain NG frames in the background with the prompt agent")
    explain_queue: int = setting(4, "NG frames waiting for an explanation before new ones are skipped", low=1)
    explain_seconds: float = setting(10.0, "time bound of one explanation", above=0.0)
    reconnect_max_s: float = setting(30.0, "longest wait between reconnection attempts of a live source", above=0.0)
    recent: int = setting(500, "results kept in memory for /api/results", low=1)
    api_token: str = setting(
        "",
        "token that HTTP calls changing state must send as 'Authorization: Bearer TOKEN' or 'X-Lineside-Token: "
        "TOKEN'; empty: operator feedback is refused (401) and POST /api/trigger stays open, so serve refuses "
        "a host beyond loopback without one",
    )
    ng_gallery: int = setting(12, "NG frames kept in memory (as JPEG) for the page's gallery", low=1, high=200)
    health_stall_s: float = setting(
        60.0,
        "/healthz fails (and the containers' HEALTHCHECK) once serve cannot do its job for this long: nothing "
        "inspected from a free-running live source, a source lost, a trigger or a sink's record left waiting",
        above=0.0,
    )
    wait_for_source: bool = setting(
        True,
        "a live source that cannot be opened at start is waited for (not ready, and unhealthy after "
        "health_stall_s); off: serve refuses to start (exit 2)",
    )

    def check(self) -> None:
        if not str(self.source).strip():
            raise ValueError("setting source: empty; give a camera index, file, folder or URL")
        if self.trigger_mqtt and self.trigger != "software":
            raise ValueError("setting trigger_mqtt: needs trigger=software (now free-run: every frame is inspected)")
        if self.camera_trigger == "software" and self.trigger != "software":
            raise ValueError("setting camera_trigger: software needs trigger=software (the triggers that fire it)")
        if self.camera_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.camera_id):
            raise ValueError(f"setting camera_id: {self.camera_id!r} must be 1 to 64 letters, digits, '.', '-' or '_'")
        if self.part_id_pattern:
            try:
                re.compile(self.part_id_pattern)
            except re.error as e:
                raise ValueError(
                    f"setting part_id_pattern: {self.part_id_pattern!r} is no regular expression: {e}"
                ) from e


SECTIONS: dict[str, type[Section]] = {
    "job": JobSettings,
    "detector": DetectorSettings,
    "agent": AgentSettings,
    "serve": ServeSettings,
}


@dataclass(frozen=True)
class Settings:
    """One process's settings, section by section; `Settings.of(threshold=0.7, port=0)` takes flat names."""

    job: JobSettings = field(default_factory=JobSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)

    @classmethod
    def of(cls, **values) -> Settings:
        return cls().replace(**values)

    def replace(self, **values) -> Settings:
        """A copy with the named settings changed, whichever section each belongs to."""
        unknown = sorted(set(values) - set(owner_of))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; see --help for the names")
        sections = {}
        for name in SECTIONS:
            mine = {k: v for k, v in values.items() if owner_of[k] == name}
            sections[name] = dataclasses.replace(getattr(self, name), **mine) if mine else getattr(self, name)
        return Settings(**sections)


owner_of: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
