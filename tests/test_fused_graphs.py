"""The transformer encoders are exported fused (export/attention.py, export/optimize.py)
and still compute what torch computes.

Fusion is checked on the graphs themselves (operator counts, no shape arithmetic
left) and numerically: against torch at fp32 tolerance, against the same
weights exported unfused, and for SAM with non-zero relative-position tables
(the random init leaves them zero, which would hide a wrong attention bias).
"""

import collections

import numpy as np
import onnx
import pytest
import torch

from export.build import build_bundle
from export.clip_export import ClipSpec
from export.clip_graphs import ClipImageGraph
from export.clip_model import load_clip
from export.onnx_tools import export_graph
from export.optimize import Optimisation, optimise_graph
from export.sam_export import SamEncoderGraph, load_sam
from runtime.bundle.loader import Bundle
from runtime.bundle.preprocess import clip_input
from runtime.bundle.sessions import OnnxSession

TOL = 1e-4  # fp32 onnxruntime vs torch eager, as test_export_parity.py
FUSED = {"MultiHeadAttention", "SkipLayerNormalization", "BiasGelu"}
TINY = "lineside-tiny-clip"


def ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("name", ["clip_image", "sam_encoder"])
def test_encoders_are_fused_static_and_record_it(tiny_bundle, name):
    bundle = Bundle.open(tiny_bundle)
    component = bundle.component(name)
    assert all(isinstance(d, int) for t in (*component.inputs, *component.outputs) for d in t.shape)
    for precision in ("fp32", "fp16"):
        entry = component.files[precision]
        found = ops(bundle.file_path(entry))
        assert all(found[op] > 0 for op in FUSED), (name, precision, found)
        assert found["Softmax"] == 0 and found["Shape"] == 0, (name, precision, found)  # attention fused, shapes folded
        record = entry.parity["graph"]
        assert record["ops"]["MultiHeadAttention"] == found["MultiHeadAttention"]
        assert record["ops_before"]["Shape"] > 0 and record["ops"]["nodes"] < record["ops_before"]["nodes"]
    if name == "clip_image":  # every block attends once, and once more in the V-V stream from vv_from on
        depth, vv_from = component.source["depth"], component.source["vv_from"]
        assert ops(bundle.file_path(component.files["fp32"]))["MultiHeadAttention"] == depth + (depth - vv_from + 1)


@pytest.fixture(scope="module")
def fused_and_plain(tmp_path_factory):
    """The tiny CLIP from one checkpoint, exported fused, unfused and fused without V-V; its model."""
    model, _ = load_clip(TINY)
    root = tmp_path_factory.mktemp("fusion")
    torch.save(model.state_dict(), root / "tiny.pt")
    for name, fuse, no_vv in (("fused", True, False), ("plain", False, False), ("novv", True, True)):
        spec = ClipSpec(arch=TINY, checkpoint=root / "tiny.pt", taps=(2, 3, 4), fuse=fuse, no_vv=no_vv)
        build_bundle(root / name, "custom", spec, None)
    return model, *(Bundle.open(root / name) for name in ("fused", "plain", "novv"))


def test_fused_clip_matches_torch_and_the_unfused_graph(fused_and_plain):
    model, fused, plain, novv = fused_and_plain
    component = fused.component("clip_image")
    assert ops(plain.file_path(plain.component("clip_image").files["fp32"]))["MultiHeadAttention"] == 0
    norm = component.preprocessing["normalisation"]
    graph = ClipImageGraph(model.visual, norm["mean"], norm["std"], component.source["vv_from"], (2, 3, 4)).eval()
    frame = np.random.default_rng(4).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    pixels = clip_input(frame, component.preprocessing)
    got, unfused = (
        fused.session("clip_image").run({"pixels": pixels}),
        plain.session("clip_image").run({"pixels": pixels}),
    )
    with torch.no_grad():
        expected = dict(zip(got, (t.numpy() for t in graph(torch.from_numpy(pixels)))))
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name], atol=TOL, err_msg=name)
        np.testing.assert_allclose(value, unfused[name], atol=TOL, err_msg=name)
    without = novv.session("clip_image").run({"pixels": pixels})  # V-V taps differ, the global embedding not
    np.testing.assert_allclose(got["image_embedding"], without["image_embedding"], atol=1e-5)
    assert all(float(np.abs(got[t] - without[t]).max()) > 100 * TOL for t in ("patch_tokens_2", "patch_tokens_4"))


def test_fused_sam_encoder_keeps_the_relative_position_bias(tmp_path):
    sam, _ = load_sam("tiny")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in sam.image_encoder.blocks:  # SAM's init leaves these zero; real checkpoints do not
            for table in (block.attn.rel_pos_h, block.attn.rel_pos_w):
                table.copy_(torch.randn(table.shape, generator=generator) * 0.5)
    pixels = torch.rand(1, 3, 1024, 1024, generator=generator) * 255
    with torch.no_grad():  # segment-anything's own encoder, not our rewrite of it
        expected = sam.image_encoder((pixels - sam.pixel_mean) / sam.pixel_std).numpy()
    path = export_graph(
        SamEncoderGraph(sam).eval(), (pixels,), tmp_path / "enc.fp32.onnx", ["pixels"], ["image_embeddings"]
    )
    attn = sam.image_encoder.blocks[0].attn
    record = optimise_graph(path, Optimisation(attn.num_heads, attn.qkv.in_features))
    assert record["ops"]["MultiHeadAttention"] == len(sam.image_encoder.blocks) and "Softmax" not in record["ops"]
    got = OnnxSession(path).run({"pixels": pixels.numpy()})["image_embeddings"]
    np.testing.assert_allclose(got, expected, atol=TOL * float(np.abs(expected).max()))
