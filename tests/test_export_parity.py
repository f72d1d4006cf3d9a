"""Torch -> ONNX -> runtime agreement on the tiny profile, against independent references.

Parity tests assert what the manifest says and how it was judged, never a
quantised figure: int8 and fp16 figures depend on the CPU that measured them
(export/int8.py), so a test that demanded one would pass on one CPU and fail
on the next.
"""

from dataclasses import asdict

import numpy as np
import onnxruntime
import open_clip
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from export.build import build_bundle
from export.clip_export import ClipSpec
from export.clip_model import load_clip
from export.int8 import DYNAMIC
from export.parity import BOUNDS, Bound, ParityError, judge
from runtime.bundle.loader import Bundle
from runtime.bundle.preprocess import clip_input, longest_side_shape, sam_coords, sam_input
from runtime.machine import X86_FLAGS

TOL = 1e-4  # fp32 onnxruntime vs torch eager, on unit-norm embeddings
TINY = "lineside-tiny-clip"


def misses(figures: dict, bound: dict) -> list[str]:
    """The outputs whose figures miss `bound`, recomputed here rather than trusted from judge()."""
    return [
        name
        for name, f in figures.items()
        if f["cosine"] < bound["min_cosine"]
        or f["max_rel_diff"] > bound["max_rel_diff"]
        or f.get("mask_iou", 1.0) < bound["min_mask_iou"]
    ]


def test_every_graph_was_measured_and_judged_by_its_own_figures(tiny_bundle):
    manifest = Bundle.open(tiny_bundle).manifest
    for name, component in manifest.components.items():
        for precision, entry in component.files.items():
            parity, at = entry.parity, (name, precision)
            assert set(parity["outputs"]) == {t.name for t in component.outputs}, at
            assert all(-1.0 - 1e-6 <= f["cosine"] <= 1.0 + 1e-6 for f in parity["outputs"].values()), at
            assert parity["bound"] == asdict(BOUNDS[precision]), at
            missed = misses(parity["outputs"], parity["bound"])
            assert parity["within_bound"] == (not missed) and len(parity["failures"]) >= len(missed), at
            assert all(any(m in text for text in parity["failures"]) for m in missed), at
        fp32 = component.files["fp32"].parity
        assert not misses(fp32["outputs"], asdict(BOUNDS["fp32"])), name  # else the export had failed
    assert set(manifest.components["clip_image"].files) == {"fp32", "fp16", "int8"}
    assert "mask_iou" in manifest.components["sam_decoder"].files["int8"].parity["outputs"]["masks"]


def test_every_figure_names_the_machine_that_measured_it(tiny_bundle):
    for component in Bundle.open(tiny_bundle).manifest.components.values():
        for precision, entry in component.files.items():
            machine = entry.parity["measured_on"]
            assert machine["cpu"] and machine["onnxruntime"] == onnxruntime.__version__
            assert machine["providers"] == ["CPUExecutionProvider"]
            if machine["arch"] == "x86_64":
                assert set(machine["isa"]) == set(X86_FLAGS) and isinstance(machine["u8s8_may_saturate"], bool)
            if precision == "int8":  # transformers: dynamic U8U8, which does not saturate
                assert entry.parity["quantisation"] == DYNAMIC.to_dict(), component.name


def test_fp32_outside_its_bound_fails_the_export_and_leaves_nothing(tmp_path, monkeypatch):
    """The judge raises for fp32, so no manifest can ever hold an fp32 graph outside its bound."""
    monkeypatch.setitem(BOUNDS, "fp32", Bound(min_cosine=1.5, max_rel_diff=1e-3, min_mask_iou=0.99))
    with pytest.raises(ParityError, match=r"fp32 graph disagrees with torch: image_embedding: cosine [01]\.\d+ < 1\.5"):
        build_bundle(tmp_path / "b", "custom", ClipSpec(arch=TINY), None)
    assert list(tmp_path.iterdir()) == []


def test_variant_outside_its_bound_is_written_and_marked(tmp_path, monkeypatch):
    monkeypatch.setitem(BOUNDS, "int8", Bound(min_cosine=1.5, max_rel_diff=0.25, min_mask_iou=0.8))
    build_bundle(tmp_path / "b", "custom", ClipSpec(arch=TINY, precisions=("fp32", "int8")), None)
    parity = Bundle.open(tmp_path / "b").component("clip_image").files["int8"].parity
    assert parity["within_bound"] is False and parity["bound"]["min_cosine"] == 1.5
    assert any(text.startswith("image_embedding: cosine ") and text.endswith("< 1.5") for text in parity["failures"])


@pytest.fixture(scope="module")
def same_weights(tmp_path_factory):
    """(model, checkpoint) of the tiny CLIP, so two exports share their weights."""
    model, _ = load_clip(TINY)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def vv_pair(same_weights, tmp_path_factory):
    """Bundles with and without the V-V stream, from the same weights, same taps (2, 3, 4)."""
    _, checkpoint = same_weights
    root = tmp_path_factory.mktemp("vv")
    for name, no_vv in (("vv", False), ("plain", True)):
        build_bundle(root / name, "custom", ClipSpec(arch=TINY, checkpoint=checkpoint, no_vv=no_vv, taps=(2, 3, 4)))
    return Bundle.open(root / "vv"), Bundle.open(root / "plain")


def _run(bundle: Bundle, frame: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    pixels = clip_input(frame, bundle.component("clip_image").preprocessing)
    return pixels, bundle.session("clip_image").run({"pixels": pixels})


def test_taps_without_vv_equal_open_clip_tokens(same_weights, vv_pair):
    """With the V-V stream off, the last tap must be open_clip's own projected tokens."""
    model, _ = same_weights
    bundle = vv_pair[1]
    frame = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    pixels, got = _run(bundle, frame)
    norm = bundle.component("clip_image").preprocessing["normalisation"]
    x = (torch.from_numpy(pixels) / 255 - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(
        1, 3, 1, 1
    )
    model.visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = model.visual(x)
        projected = torch.nn.functional.normalize(tokens @ model.visual.proj, dim=-1)  # open_clip: unprojected
    model.visual.output_tokens = False
    np.testing.assert_allclose(got["patch_tokens_4"], projected, atol=TOL)
    np.testing.assert_allclose(got["image_embedding"], torch.nn.functional.normalize(pooled, dim=-1), atol=TOL)


def test_vv_stream_changes_tokens_but_not_the_global_embedding(vv_pair):
    vv, plain = vv_pair
    assert vv.component("clip_image").source["vv_from"] == 2 and plain.component("clip_image").source["vv_from"] is None
    frame = np.random.default_rng(3).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    _, with_vv = _run(vv, frame)
    _, without = _run(plain, frame)
    np.testing.assert_allclose(with_vv["image_embedding"], without["image_embedding"], atol=1e-5)
    for tap in ("patch_tokens_2", "patch_tokens_3", "patch_tokens_4"):  # V-V runs in blocks 2-4
        gap = float(np.abs(with_vv[tap] - without[tap]).max())
        assert gap > 100 * TOL, f"{tap}: V-V on and off differ by only {gap:.1e}"


def test_tiny_profile_taps_read_the_vv_stream(tiny_bundle):
    comp = Bundle.open(tiny_bundle).component("clip_image")
    assert comp.source["vv_from"] == 2 and [t["layer"] for t in comp.config["taps"]] == [2, 3, 4]
    assert comp.source["wrapper_vs_open_clip_max_abs_diff"] < 1e-5


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
