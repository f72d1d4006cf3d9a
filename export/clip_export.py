"""`python -m export clip`: open_clip checkpoint -> clip_image + clip_text components."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

from runtime.bundle.manifest import Component, TensorSpec
from runtime.bundle.preprocess import clip_input
from runtime.bundle.tokenizer import ClipTokenizer

from .clip_graphs import ClipImageGraph, ClipTextGraph, tap_name
from .clip_model import load_clip, preset_for
from .measure import export_measured
from .optimize import Optimisation
from .preprocessing import stretched_square
from .samples import PARITY_PROMPTS, parity_image
from .writer import BundleWriter

log = logging.getLogger("lineside.export")

MAX_BATCH = {"input_ids": 64}  # the TensorRT profile's upper end (the image graph is static, batch 1)
# Text embeddings are computed once per prompt and cached, so a faster text graph
# buys nothing; and onnxruntime 1.31's CPU provider crashes (SIGSEGV at session
# creation, ORT_ENABLE_ALL) on the fp16 conversion of this graph.
TEXT_PRECISIONS = ("fp32",)


@dataclass(frozen=True)
class ClipSpec:
    """What to export. None means: the architecture's preset (clip_model.CLIP_PRESETS)."""

    arch: str = "ViT-B-16"
    pretrained: str | None = None
    checkpoint: Path | None = None
    image_size: int | None = None
    vv_from: int | None = None
    taps: tuple[int, ...] | None = None
    no_vv: bool = False
    precisions: tuple[str, ...] = ("fp32",)
    fuse: bool = True  # attention as onnxruntime's fused operator, graph folded and fused (optimize.py)


def export_clip(spec: ClipSpec, writer: BundleWriter) -> list[Component]:
    depth_cfg = (open_clip.get_model_config(spec.arch) or {}).get("vision_cfg", {}).get("layers", 12)
    preset = preset_for(spec.arch, depth_cfg)
    size = spec.image_size or preset.image_size
    model, source = load_clip(spec.arch, spec.pretrained, spec.checkpoint, size)
    mean, std = _norm_constants(model)
    vv_from = None if spec.no_vv else (spec.vv_from or preset.vv_from)
    graph = ClipImageGraph(model.visual, mean, std, vv_from, spec.taps or preset.taps, fused=spec.fuse).eval()
    image = _export_image(graph, model, size, mean, std, spec, writer, source)
    text = _export_text(model, spec, writer, source)
    return [image, text]


def _norm_constants(model) -> tuple[list[float], list[float]]:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = list(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = list(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return mean, std


def _export_image(graph, model, size, mean, std, spec, writer, source) -> Component:
    prep = stretched_square(size, "bicubic", mean, std)
    pixels = np.concatenate([clip_input(parity_image(300, 400, seed), prep) for seed in (0, 1)])
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        outputs = [t.numpy() for t in graph(x)]
        eager = model.encode_image((x / 255 - graph.mean / 255) / (graph.std / 255), normalize=True)
    wrapper_gap = float(np.abs(eager.numpy() - outputs[0]).max())
    if wrapper_gap > 1e-4:
        raise RuntimeError(f"image graph wrapper differs from open_clip's encode_image by {wrapper_gap:.2e}")
    names = ["image_embedding", *[tap_name(t) for t in graph.taps]]
    # Static shapes, batch 1 (what the detector runs): no shape arithmetic is left in the graph.
    cases = [({n: o[i : i + 1] for n, o in zip(names, outputs)}, {"pixels": pixels[i : i + 1]}) for i in range(len(x))]
    blocks = model.visual.transformer.resblocks
    graphs = export_measured(
        writer,
        "clip_image",
        graph,
        (x[:1],),
        ["pixels"],
        names,
        cases=cases,
        precisions=spec.precisions,
        optimise=Optimisation(blocks[0].attn.num_heads, blocks[0].attn.embed_dim) if graph.fused else None,
    )
    grid = size // model.visual.patch_size[0]
    dim = outputs[0].shape[-1]
    return Component(
        name="clip_image",
        role="image_encoder",
        kind="onnx",
        files=graphs.files,
        assets=graphs.assets,
        inputs=(TensorSpec("pixels", (1, 3, size, size), "float32"),),
        outputs=(
            TensorSpec("image_embedding", (1, dim), "float32"),
            *[TensorSpec(tap_name(t), (1, grid * grid, dim), "float32") for t in graph.taps],
        ),
        preprocessing=prep,
        config={  # what the runtime reads; how the graph was made is in `source`
            "grid": [grid, grid],
            "taps": [{"layer": t, "output": tap_name(t)} for t in graph.taps],
            "branches": ["language", "reference"],
            "logit_scale": round(float(model.logit_scale.detach().exp()), 4),
        },
        source=source
        | {
            "image_size": size,
            "patch_size": model.visual.patch_size[0],
            "depth": len(model.visual.transformer.resblocks),
            "vv_from": graph.vv_from,
            "wrapper_vs_open_clip_max_abs_diff": wrapper_gap,
        },
        tensorrt_profile={"pixels": {k: [1, 3, size, size] for k in ("min", "opt", "max")}},
    )


def _export_text(model, spec, writer, source) -> Component:
    tokenizer = open_clip.get_tokenizer(spec.arch)
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.reduction_fn is not None:
        raise NotImplementedError(f"{spec.arch} uses {type(tokenizer).__name__}; the runtime has CLIP's BPE only")
    vocab = writer.path("tokenizer/bpe_simple_vocab_16e6.txt.gz")
    shutil.copyfile(open_clip.tokenizer.default_bpe(), vocab)
    ctx = tokenizer.context_length
    ours = ClipTokenizer(vocab, ctx)
    theirs = tokenizer(PARITY_PROMPTS).numpy()
    if not np.array_equal(ours(PARITY_PROMPTS), theirs):
        raise RuntimeError("the runtime tokenizer disagrees with open_clip's; the text graph would be fed wrong ids")
    text_graph = ClipTextGraph(model).eval()
    with torch.no_grad():
        reference = text_graph(torch.from_numpy(theirs)).numpy()
    graphs = export_measured(
        writer,
        "clip_text",
        text_graph,
        (torch.from_numpy(theirs),),
        ["input_ids"],
        ["text_embedding"],
        reference={"text_embedding": reference},
        feeds={"input_ids": theirs},
        precisions=TEXT_PRECISIONS,
        dynamic_axes={"input_ids": {0: "batch"}, "text_embedding": {0: "batch"}},
    )
    return Component(
        name="clip_text",
        role="text_encoder",
        kind="onnx",
        files=graphs.files,
        inputs=(TensorSpec("input_ids", ("batch", ctx), "int64"),),
        outputs=(TensorSpec("text_embedding", ("batch", reference.shape[-1]), "float32"),),
        assets={"tokenizer": writer.entry("tokenizer/bpe_simple_vocab_16e6.txt.gz"), **graphs.assets},
        config={
            "tokenizer": {
                "kind": "clip_bpe",
                "context_length": ctx,
                "num_merges": len(ours.ranks),
                "sot": ours.sot,
                "eot": ours.eot,
            },
        },
        source=source | {"tokenizer_checked_against_open_clip": len(PARITY_PROMPTS)},
        tensorrt_profile=_profile("input_ids", (ctx,), opt=16),
    )


def _profile(name: str, rest: tuple[int, ...], opt: int = 1) -> dict:
    """TensorRT min/opt/max shapes for a batch-first input."""
    return {name: {"min": [1, *rest], "opt": [opt, *rest], "max": [MAX_BATCH[name], *rest]}}
