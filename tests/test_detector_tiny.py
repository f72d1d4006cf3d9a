"""The detector on the tiny exported bundle: torch agreement and degenerate frames."""

import numpy as np
import pytest
import torch

from export.build import build_bundle
from export.clip_export import ClipSpec
from export.clip_graphs import ClipImageGraph
from export.clip_model import load_clip
from export.reference import torch_scores
from runtime.bundle.preprocess import clip_input
from runtime.detect.detector import Detector
from runtime.detect.frames import to_rgb_uint8

MAP_TOL, SCORE_TOL = 2e-3, 1e-4  # fp32 onnxruntime + OpenCV vs torch eager


@pytest.fixture(scope="module")
def tiny_detector(tiny_bundle, tmp_path_factory):
    return Detector.from_bundle(tiny_bundle, text_cache_dir=tmp_path_factory.mktemp("text"))


def test_runtime_maps_and_scores_match_the_torch_reference(tmp_path):
    model, _ = load_clip("lineside-tiny-clip")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    build_bundle(tmp_path / "b", "custom", ClipSpec(arch="lineside-tiny-clip", checkpoint=tmp_path / "tiny.pt"), None)
    # the torch reference scores by the map's maximum: top_fraction 0 is that rule in the runtime
    detector = Detector.from_bundle(tmp_path / "b", sam_gate=1.0, top_fraction=0.0, text_cache_dir=tmp_path / "text")
    comp = detector.encoder.component
    norm = comp.preprocessing["normalisation"]
    graph = ClipImageGraph(
        model.visual, norm["mean"], norm["std"], comp.source["vv_from"], [t["layer"] for t in comp.config["taps"]]
    ).eval()
    rng = np.random.default_rng(5)
    for h, w in [(200, 300), (64, 64), (480, 360)]:
        frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        result = detector.detect(frame, "screw", colour="RGB")
        score, expected = torch_scores(
            model, graph, "lineside-tiny-clip", "screw", clip_input(frame, comp.preprocessing), (h, w)
        )
        assert abs(result.image_score - score) <= SCORE_TOL
        assert np.abs(result.anomaly_map - expected).max() <= MAP_TOL
        assert result.regions == [] and result.refiner == "none"


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((16, 16, 3), np.uint8),
        np.zeros((120, 160, 3), np.uint8),
        np.full((6000, 8000, 3), 90, np.uint8),
        np.full((100, 80), 200, np.uint8),
        np.full((100, 80, 3), 40000, np.uint16),
        np.full((100, 80, 4), 0.5, np.float32),
        np.full((100, 80, 1), 7, np.uint8),
    ],
    ids=["smallest", "black", "8000x6000", "gray", "16bit", "float-bgra", "hxwx1"],
)
def test_degenerate_frames_give_a_full_size_result(tiny_detector, frame):
    result = tiny_detector.detect(frame, "screw")
    assert result.label in ("OK", "NG") and 0.0 <= result.image_score <= 1.0
    assert result.anomaly_map.shape == frame.shape[:2] and result.anomaly_map.dtype == np.float32
    assert np.isfinite(result.anomaly_map).all()
    assert result.providers == ("CPUExecutionProvider",) and result.bundle_id


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "got None"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((10, 10, 2), np.uint8), "HxWx3 or HxWx4"),
        (np.zeros((32, 32, 3), np.int32), "unsupported dtype int32"),
        (np.full((32, 32, 3), np.nan, np.float32), "NaN"),
        (np.zeros((8, 640, 3), np.uint8), "too small"),
        ("frame.png", "got str"),
    ],
)
def test_bad_frames_raise_value_error_naming_the_input(tiny_detector, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_detector.detect(bad, "screw")


def test_colour_order_is_declared_not_guessed():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 255  # red in BGR
    assert (to_rgb_uint8(bgr, "BGR", min_side=1)[..., 0] == 255).all()
    assert (to_rgb_uint8(bgr, "RGB", min_side=1)[..., 2] == 255).all()
    with pytest.raises(ValueError, match="colour must be one of"):
        to_rgb_uint8(bgr, "HSV")


def test_result_json_and_pngs_round_trip(tiny_detector, tmp_path):
    import json

    from runtime.detect.result import read_map

    result = tiny_detector.detect(np.full((90, 120, 3), 100, np.uint8), "screw")
    data = result.save(tmp_path, "frame0")
    json.dumps(data)  # serialisable
    assert data["settings"]["threshold"] == tiny_detector.settings.threshold
    assert np.abs(read_map(tmp_path / data["anomaly_map"]) - result.anomaly_map).max() <= 1 / 65535
