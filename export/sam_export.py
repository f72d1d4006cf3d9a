"""`python -m export sam`: segment-anything -> sam_encoder + sam_decoder components.

The decoder graph is segment-anything's own `SamOnnxModel` (prompt encoder,
mask decoder and mask upscaling to the original size) with all four mask slots
returned: slot 0 is the single-mask answer, slots 1-3 the multi-mask answers,
so one graph serves both modes. Parity is measured against the eager
`prompt_encoder` + `mask_decoder` + `postprocess_masks` path that SamPredictor
uses, with segment-anything's own coordinate transform, so the runtime's numpy
transform is checked too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import segment_anything
import torch
from segment_anything.build_sam import _build_sam
from segment_anything.utils.onnx import SamOnnxModel
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from runtime.bundle.manifest import Component, TensorSpec
from runtime.bundle.preprocess import longest_side_shape, sam_input, sam_prompts

from .checkpoints import file_source, load_exact, read_state_dict
from .measure import export_measured
from .optimize import Optimisation
from .sam_graphs import encoder_forward
from .samples import parity_image
from .writer import BundleWriter

LICENSE = "Apache-2.0 (segment-anything code and the SAM checkpoints)"
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
PARITY_SIZE = (480, 640)  # a non-square frame, so the longest-side transform matters
MAX_POINTS = 16


@dataclass(frozen=True)
class SamPreset:
    embed_dim: int
    depth: int
    heads: int
    global_attn: tuple[int, ...]


SAM_PRESETS = {
    "vit_b": SamPreset(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamPreset(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamPreset(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": SamPreset(32, 2, 2, (1,)),  # tests: same decoder, a 2-block encoder
}


@dataclass(frozen=True)
class SamSpec:
    variant: str = "vit_b"
    checkpoint: Path | None = None
    precisions: tuple[str, ...] = ("fp32",)
    fuse: bool = True  # the encoder's attention as onnxruntime's fused operator, folded and fused (optimize.py)


def load_sam(variant: str, checkpoint: Path | None = None) -> tuple[nn.Module, dict]:
    """SAM in eval mode and its provenance. No checkpoint = random init."""
    if variant not in SAM_PRESETS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {', '.join(SAM_PRESETS)}")
    p = SAM_PRESETS[variant]
    sam = _build_sam(p.embed_dim, p.depth, p.heads, list(p.global_attn), checkpoint=None)
    source = {"library": "segment_anything", "architecture": f"sam_{variant}"}
    if checkpoint:
        load_exact(sam, read_state_dict(Path(checkpoint)), f"checkpoint {checkpoint} (for sam {variant})")
        source |= file_source(Path(checkpoint)) | {"license": LICENSE}
    else:
        source |= {"random_init": True, "license": "none (random weights: plumbing and speed only)"}
    return sam.eval(), source


class SamEncoderGraph(nn.Module):
    """(1, 3, 1024, 1024) float32 RGB 0..255, padded with the mean -> (1, 256, 64, 64).

    `fused`: attention traces as onnxruntime's MultiHeadAttention (sam_graphs.py).
    """

    def __init__(self, sam: nn.Module, fused: bool = True):
        super().__init__()
        self.encoder = sam.image_encoder
        self.fused = fused
        self.register_buffer("mean", sam.pixel_mean.clone()[None])
        self.register_buffer("std", sam.pixel_std.clone()[None])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return encoder_forward(self.encoder, (pixels - self.mean) / self.std, self.fused)


def export_sam(spec: SamSpec, writer: BundleWriter) -> list[Component]:
    sam, source = load_sam(spec.variant, spec.checkpoint)
    source |= {"library_version": getattr(segment_anything, "__version__", "1.0")}
    encoder, embeddings = _export_encoder(sam, spec, writer, source)
    decoder = _export_decoder(sam, embeddings, spec, writer, source)
    return [encoder, decoder]


def _encoder_prep(sam) -> dict:
    mean = [round(float(v), 4) for v in sam.pixel_mean.flatten()]
    return {
        "layout": "NCHW",
        "colour": "RGB",
        "dtype": "float32",
        "range": [0, 255],
        "resize": "longest_side",
        "target_length": sam.image_encoder.img_size,
        "interpolation": "bilinear",
        "pad": "bottom_right",
        "pad_value": mean,
        "normalisation": {"where": "graph", "mean": mean, "std": [float(v) for v in sam.pixel_std.flatten()]},
    }


def _export_encoder(sam, spec, writer, source) -> tuple[Component, np.ndarray]:
    prep = _encoder_prep(sam)
    target = prep["target_length"]
    pixels = sam_input(parity_image(*PARITY_SIZE, seed=2), prep)
    new_h, new_w = longest_side_shape(*PARITY_SIZE, target)
    unpadded = torch.from_numpy(pixels[:, :, :new_h, :new_w].copy())
    with torch.no_grad():  # SAM's own normalise-then-zero-pad path
        reference = sam.image_encoder(sam.preprocess(unpadded)).numpy()
    graph = SamEncoderGraph(sam, fused=spec.fuse).eval()
    attn = sam.image_encoder.blocks[0].attn
    graphs = export_measured(
        writer,
        "sam_encoder",
        graph,
        (torch.from_numpy(pixels),),
        ["pixels"],
        ["image_embeddings"],
        reference={"image_embeddings": reference},
        feeds={"pixels": pixels},
        precisions=spec.precisions,
        optimise=Optimisation(attn.num_heads, attn.qkv.in_features) if spec.fuse else None,
        features={"image_embeddings": 1},  # a 256-vector per position (NCHW)
    )
    shape = (1, 3, target, target)
    component = Component(
        name="sam_encoder",
        role="sam_encoder",
        kind="onnx",
        files=graphs.files,
        assets=graphs.assets,
        inputs=(TensorSpec("pixels", shape, "float32"),),
        outputs=(TensorSpec("image_embeddings", tuple(reference.shape), "float32"),),
        preprocessing=prep,
        source=source,
        tensorrt_profile={"pixels": {"min": list(shape), "opt": list(shape), "max": list(shape)}},
    )
    return component, reference


def _decoder_cases(sam, embeddings: np.ndarray, prep: dict) -> list[tuple[dict, dict]]:
    """(torch reference, onnx feeds) for two prompts: points only, and points + box."""
    prompts = [
        (np.array([[320.0, 240.0], [100.0, 400.0]]), np.array([1.0, 0.0]), None),
        (np.array([[300.0, 200.0], [50.0, 60.0]]), np.array([1.0, 1.0]), np.array([200.0, 150.0, 450.0, 330.0])),
    ]
    return [(_decoder_reference(sam, embeddings, *p), sam_prompts(PARITY_SIZE, prep, *p)) for p in prompts]


def _decoder_reference(sam, embeddings, points, labels, box) -> dict[str, np.ndarray]:
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    coords = torch.as_tensor(transform.apply_coords(points, PARITY_SIZE), dtype=torch.float32)[None]
    boxes = None if box is None else torch.as_tensor(transform.apply_boxes(box, PARITY_SIZE), dtype=torch.float32)
    emb = torch.from_numpy(embeddings)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=(coords, torch.as_tensor(labels, dtype=torch.float32)[None]), boxes=boxes, masks=None
        )
        pe = sam.prompt_encoder.get_dense_pe()
        single = sam.mask_decoder(emb, pe, sparse, dense, multimask_output=False)
        multi = sam.mask_decoder(emb, pe, sparse, dense, multimask_output=True)
        low = torch.cat([single[0], multi[0]], dim=1)  # (1, 4, 256, 256)
        input_size = longest_side_shape(*PARITY_SIZE, sam.image_encoder.img_size)
        masks = sam.postprocess_masks(low, input_size, PARITY_SIZE)
    iou = torch.cat([single[1], multi[1]], dim=1)
    return {"masks": masks.numpy(), "iou_predictions": iou.numpy(), "low_res_masks": low.numpy()}


def _export_decoder(sam, embeddings, spec, writer, source) -> Component:
    target = sam.image_encoder.img_size
    low = sam.prompt_encoder.mask_input_size[0]
    prep = {
        "coordinate_transform": {"kind": "resize_longest_side", "rounding": "half_up", "applies_to": "point_coords"},
        "target_length": target,
        "box_labels": [2, 3],
        "pad_point_label": -1,
        "mask_input_size": low,
    }
    cases = _decoder_cases(sam, embeddings, prep)
    args = tuple(torch.from_numpy(cases[0][1][n]) for n in DECODER_INPUTS[1:])
    graphs = export_measured(
        writer,
        "sam_decoder",
        SamOnnxModel(sam, return_single_mask=False).eval(),
        (torch.from_numpy(embeddings), *args),
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        cases=[(ref, {"image_embeddings": embeddings, **feeds}) for ref, feeds in cases],
        precisions=spec.precisions,
        masks=("masks", "low_res_masks"),
        dynamic_axes={"point_coords": {1: "points"}, "point_labels": {1: "points"}, "masks": {2: "height", 3: "width"}},
    )
    emb_shape = tuple(embeddings.shape)
    return Component(
        name="sam_decoder",
        role="sam_decoder",
        kind="onnx",
        files=graphs.files,
        assets=graphs.assets,
        inputs=(
            TensorSpec("image_embeddings", emb_shape, "float32"),
            TensorSpec("point_coords", (1, "points", 2), "float32"),
            TensorSpec("point_labels", (1, "points"), "float32"),
            TensorSpec("mask_input", (1, 1, low, low), "float32"),
            TensorSpec("has_mask_input", (1,), "float32"),
            TensorSpec("orig_im_size", (2,), "float32"),
        ),
        outputs=(
            TensorSpec("masks", (1, 4, "height", "width"), "float32"),
            TensorSpec("iou_predictions", (1, 4), "float32"),
            TensorSpec("low_res_masks", (1, 4, low, low), "float32"),
        ),
        preprocessing=prep,
        config={"mask_slots": {"single": [0], "multi": [1, 2, 3]}, "mask_threshold": float(sam.mask_threshold)},
        source=source,
        tensorrt_profile={
            "point_coords": {"min": [1, 1, 2], "opt": [1, 3, 2], "max": [1, MAX_POINTS, 2]},
            "point_labels": {"min": [1, 1], "opt": [1, 3], "max": [1, MAX_POINTS]},
        },
    )
