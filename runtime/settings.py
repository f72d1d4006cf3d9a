"""Every knob of the detector, with its default and why, in one object.

A `Result` carries the settings that produced it, so a decision can always be
traced back to the thresholds in force.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .options import setting
from .bundle.manifest import PRECISIONS


@dataclass(frozen=True)
class DetectorSettings:
    precision: str = setting("fp32", "graph precision to run", choices=PRECISIONS)
    providers: tuple[str, ...] = setting(("cpu",), "onnxruntime providers in order: tensorrt,cuda,cpu")
    threads: int | None = setting(None, "intra-op threads per session (None: onnxruntime decides)")
    strict_providers: bool = setting(False, "refuse to start when a requested accelerator (tensorrt, cuda) "
                                     "is not obtained, instead of running on the next provider")  # fmt: skip
    trt_cache_dir: Path | None = setting(None, "where TensorRT engines are built and cached")
    trt_fp16: bool = setting(False, "let TensorRT build fp16 engines (faster on GPUs with tensor cores)")
    threshold: float = setting(0.5, "image score at or above which a frame is NG; `calibrate` sets it")
    logit_scale: float = setting(100.0, "CLIP temperature in softmax(scale * [<x,t_n>, <x,t_a>])")
    smoothing_sigma: float = setting(4.0, "Gaussian sigma of the anomaly map, in pixels at 518 px input")
    map_weight: float = setting(
        0.5, "image score = (1 - w) * global-embedding score + w * map maximum (0: global only)"
    )
    reference_weight: float = setting(0.5, "weight of the reference (few-shot) map when references are given")
    use_sam: bool = setting(True, "refine suspicious frames with SAM when the bundle has it")
    sam_gate: float = setting(0.4, "SAM runs only when the image score or map maximum reaches this")
    region_threshold: float = setting(0.5, "map value above which pixels form candidate regions")
    min_region_frac: float = setting(0.0005, "smallest region kept, as a fraction of the frame")
    max_region_frac: float = setting(0.5, "largest region kept (larger is the part or the background)")
    max_regions: int = setting(8, "at most this many regions per frame, strongest first")
    sam_min_iou: float = setting(0.5, "smallest SAM-predicted IoU for a mask to be kept")
    sam_min_mass: float = setting(0.3, "smallest mean anomaly-map value inside a kept mask")
    refine_mix: float = setting(0.5, "refined map = (1 - mix) * map + mix * region score inside masks")
    text_cache_dir: Path | None = setting(None, "text-embedding cache (default ~/.cache/lineside/text)")
    prompt_dir: Path | None = setting(None, "folder of prompt banks CATEGORY.json (default BUNDLE/prompts)")
    input_bits: int = setting(16, "bit depth of uint16 frames (10, 12, 14 or 16); values above it are refused")
    min_frame_side: int = setting(16, "frames with a side shorter than this many pixels are refused (ERROR)")

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"setting {name}: {value} is not a finite number")
        if self.precision not in PRECISIONS:
            raise ValueError(f"setting precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("threshold", "map_weight", "reference_weight", "sam_gate", "region_threshold",
                     "sam_min_iou", "sam_min_mass", "refine_mix"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"setting {name}: {value} is outside 0..1")
        if self.logit_scale <= 0 or self.smoothing_sigma < 0:
            raise ValueError("settings logit_scale must be > 0 and smoothing_sigma >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"setting threads: {self.threads} must be >= 1 (or unset)")
        if self.max_regions < 1 or self.min_frame_side < 1:
            raise ValueError("settings max_regions and min_frame_side must be >= 1")
        if self.input_bits not in (10, 12, 14, 16):
            raise ValueError(f"setting input_bits: {self.input_bits} is not one of 10, 12, 14, 16")
        if not 0 <= self.min_region_frac < self.max_region_frac <= 1:
            raise ValueError("settings min_region_frac/max_region_frac must satisfy 0 <= min < max <= 1")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}  # fmt: skip
