"""Torch -> ONNX -> runtime agreement on the tiny profile, against independent references."""

import numpy as np
import open_clip
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from export.build import build_bundle
from export.clip_export import ClipSpec
from export.clip_model import load_clip
from export.parity import BOUNDS, ParityError, judge
from runtime.bundle import Bundle
from runtime.preprocess import clip_input, longest_side_shape, sam_coords, sam_input

TOL = 1e-4  # fp32 onnxruntime vs torch eager, on unit-norm embeddings


def test_every_fp32_graph_met_its_bound_and_variants_were_measured(tiny_bundle):
    manifest = Bundle.open(tiny_bundle).manifest
    for name, component in manifest.components.items():
        assert component.files["fp32"].parity["within_bound"], name
        for precision, entry in component.files.items():
            figures = entry.parity["outputs"]
            assert figures and all(0.0 <= f["cosine"] <= 1.0 + 1e-6 for f in figures.values()), (name, precision)
            assert entry.parity["bound"] == BOUNDS[precision].__dict__
    assert set(manifest.components["clip_image"].files) == {"fp32", "fp16", "int8"}
    assert "mask_iou" in manifest.components["sam_decoder"].files["int8"].parity["outputs"]["masks"]


def test_taps_without_vv_equal_open_clip_tokens(tmp_path):
    """With the V-V stream off, the last tap must be open_clip's own projected tokens."""
    model, _ = load_clip("lineside-tiny-clip")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")  # the export reads the same weights back
    out = tmp_path / "b"
    spec = ClipSpec(arch="lineside-tiny-clip", checkpoint=tmp_path / "tiny.pt", no_vv=True, taps=(4,))
    build_bundle(out, "custom", spec, None)
    bundle = Bundle.open(out)
    comp = bundle.component("clip_image")
    frame = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    pixels = clip_input(frame, comp.preprocessing)
    got = bundle.session("clip_image").run({"pixels": pixels})
    norm = comp.preprocessing["normalisation"]
    x = (torch.from_numpy(pixels) / 255 - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        norm["std"]
    ).view(1, 3, 1, 1)
    model.visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = model.visual(x)
        projected = torch.nn.functional.normalize(tokens @ model.visual.proj, dim=-1)  # open_clip: unprojected
    np.testing.assert_allclose(got["patch_tokens_4"], projected, atol=TOL)
    np.testing.assert_allclose(got["image_embedding"], torch.nn.functional.normalize(pooled, dim=-1), atol=TOL)


def test_vv_stream_changes_tokens_but_not_the_global_embedding(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    comp = bundle.component("clip_image")
    assert comp.config["vv_from"] == 2 and [t["layer"] for t in comp.config["taps"]] == [2, 3, 4]
    assert comp.config["wrapper_vs_open_clip_max_abs_diff"] < 1e-5


def test_sam_coordinate_transform_matches_segment_anything():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 5000, size=2))
        pts = rng.uniform(0, [w, h], size=(5, 2))
        ref = ResizeLongestSide(1024)
        assert longest_side_shape(h, w, 1024) == ref.get_preprocess_shape(h, w, 1024)
        np.testing.assert_allclose(sam_coords(pts, (h, w), 1024), ref.apply_coords(pts, (h, w)), rtol=1e-5)


def test_sam_padding_is_zero_after_in_graph_normalisation(tiny_bundle):
    comp = Bundle.open(tiny_bundle).component("sam_encoder")
    frame = np.full((300, 600, 3), 255, np.uint8)
    pixels = sam_input(frame, comp.preprocessing)
    mean = np.array(comp.preprocessing["normalisation"]["mean"], np.float32).reshape(1, 3, 1, 1)
    assert pixels.shape == (1, 3, 1024, 1024)
    assert np.allclose((pixels - mean)[:, :, 512:, :], 0) and np.allclose(pixels[:, :, :512, :], 255)


def test_judge_fails_loudly_only_for_fp32():
    bad = {"x": {"max_abs_diff": 0.5, "max_rel_diff": 0.5, "cosine": 0.9}}
    with pytest.raises(ParityError, match=r"x: cosine 0\.900000 < 0\.9999"):
        judge(bad, "fp32")
    verdict = judge(bad, "int8")
    assert not verdict["within_bound"] and verdict["failures"]


def test_clip_input_rejects_wrong_layouts(tiny_bundle):
    prep = Bundle.open(tiny_bundle).component("clip_image").preprocessing
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.uint16)):
        with pytest.raises(ValueError, match="expected an HxWx3 uint8 RGB image"):
            clip_input(bad, prep)


def test_open_clip_mean_is_the_graphs_mean(tiny_bundle):
    norm = Bundle.open(tiny_bundle).component("clip_image").preprocessing["normalisation"]
    assert norm["where"] == "graph" and tuple(norm["mean"]) == open_clip.OPENAI_DATASET_MEAN
