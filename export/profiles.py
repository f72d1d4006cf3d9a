"""Bundle profiles: which CLIP and SAM, at which precisions. Data, not code paths."""

from __future__ import annotations

from dataclasses import dataclass

from .clip_export import ClipSpec
from .mllm_export import MllmSpec
from .patch_encoder import PatchSpec
from .sam_export import SamSpec


@dataclass(frozen=True)
class Profile:
    note: str
    clip: ClipSpec | None = None
    sam: SamSpec | None = None
    patch: PatchSpec | None = None
    mllm: MllmSpec | None = None


PROFILES = {
    "default": Profile(
        "offline default: EfficientNet-Lite0 ImageNet weights (few-shot patch encoder) and SmolLM2-135M-Instruct",
        patch=PatchSpec(precisions=("fp32", "fp16", "int8")),
        mllm=MllmSpec(packaged=True),
    ),
    # The default's bundle with a larger EfficientNet-Lite: same stages (stride 8 and 16), same
    # 320 px input and so the same 40x40 grid, memory size and scoring cost; only the encoder
    # differs, which is what an accuracy-against-latency comparison of the three needs.
    **{
        name: Profile(
            f"the offline default with EfficientNet-{name.capitalize()} ImageNet weights in place of Lite0",
            patch=PatchSpec(variant=name, precisions=("fp32", "fp16", "int8")),
            mllm=MllmSpec(packaged=True),
        )
        for name in ("lite1", "lite2")
    },
    "tiny": Profile(
        "4-block CLIP and 2-block SAM encoder, random weights: tests and plumbing, built in seconds",
        clip=ClipSpec(arch="lineside-tiny-clip", precisions=("fp32", "fp16", "int8")),
        sam=SamSpec(variant="tiny", precisions=("fp32", "fp16", "int8")),
    ),
    "edge": Profile(
        "ViT-B-16 at 224 + SAM vit_b: a Jetson-class box",
        clip=ClipSpec(arch="ViT-B-16", pretrained="openai", precisions=("fp32", "fp16", "int8")),
        sam=SamSpec(variant="vit_b", precisions=("fp32", "fp16", "int8")),
    ),
    "accuracy": Profile(
        "ViT-L-14-336 at 518 (AnomalyCLIP's setting) + SAM vit_h: a GPU server",
        clip=ClipSpec(arch="ViT-L-14-336", pretrained="openai", image_size=518, precisions=("fp32", "fp16")),
        sam=SamSpec(variant="vit_h", precisions=("fp32", "fp16")),
    ),
}
