"""Bundle profiles: which CLIP and SAM, at which precisions. Data, not code paths."""

from __future__ import annotations

from dataclasses import dataclass

from .clip_export import ClipSpec
from .sam_export import SamSpec


@dataclass(frozen=True)
class Profile:
    clip: ClipSpec
    sam: SamSpec
    note: str


PROFILES = {
    "tiny": Profile(
        ClipSpec(arch="lineside-tiny-clip", precisions=("fp32", "fp16", "int8")),
        SamSpec(variant="tiny", precisions=("fp32", "fp16", "int8")),
        "4-block CLIP and 2-block SAM encoder, random weights: tests and plumbing, built in seconds",
    ),
    "edge": Profile(
        ClipSpec(arch="ViT-B-16", pretrained="openai", precisions=("fp32", "fp16", "int8")),
        SamSpec(variant="vit_b", precisions=("fp32", "fp16", "int8")),
        "ViT-B-16 at 224 + SAM vit_b: a Jetson-class box",
    ),
    "accuracy": Profile(
        ClipSpec(arch="ViT-L-14-336", pretrained="openai", image_size=518, precisions=("fp32", "fp16")),
        SamSpec(variant="vit_h", precisions=("fp32", "fp16")),
        "ViT-L-14-336 at 518 (AnomalyCLIP's setting) + SAM vit_h: a GPU server",
    ),
}
