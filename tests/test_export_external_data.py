"""Graphs with external data (> 2 GB in real life), forced on the tiny profile by a zero threshold.

The real case (SAM vit_h's 2.5 GB encoder) is tests/test_edge_export_slow.py's slow test;
this one drives every tiny graph through the same code path in seconds.
"""

import shutil

import numpy as np
import onnx
import pytest

from export.__main__ import main
from export.build import build_bundle
from export.graph_files import THRESHOLD_ENV, data_path, external_data, save_graph, threshold_from_env
from export.patch_encoder import PatchSpec
from export.profiles import PROFILES
from runtime.bundle.loader import Bundle, file_sha256
from runtime.bundle.manifest import BundleError

FEEDS = {
    "clip_image": lambda c: {"pixels": np.full((1, *c.inputs[0].shape[1:]), 128, np.float32)},
    "clip_text": lambda c: {"input_ids": np.zeros((2, c.inputs[0].shape[1]), np.int64)},
    "sam_encoder": lambda c: {"pixels": np.full(c.inputs[0].shape, 128, np.float32)},
}


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    """The tiny profile at fp32/fp16/int8 with every tensor of 1 KiB or more in NAME.onnx.data."""
    out = tmp_path_factory.mktemp("external") / "tiny"
    profile = PROFILES["tiny"]
    build_bundle(out, "tiny", clip=profile.clip, sam=profile.sam, external_data_threshold=0)
    return out


def test_every_graph_has_one_data_file_recorded_as_an_asset(external_bundle):
    bundle = Bundle.open(external_bundle)  # checks every file's size and sha256, data files included
    for name, component in bundle.manifest.components.items():
        for precision, entry in component.files.items():
            graph = external_bundle / entry.path
            data = component.assets[f"{precision}.data"]
            assert external_data(graph) == data_path(graph) == external_bundle / data.path, (name, precision)
            assert data.bytes == (external_bundle / data.path).stat().st_size > graph.stat().st_size
            assert data.sha256 == file_sha256(external_bundle / data.path)
            assert (external_bundle / data.path).stat().st_mode & 0o777 == graph.stat().st_mode & 0o777


def test_fp32_graphs_read_from_data_files_still_match_torch(external_bundle):
    """Parity is measured on the written graphs, so fp32 passing its bound proves the weights came back."""
    for name, component in Bundle.open(external_bundle).manifest.components.items():
        assert component.files["fp32"].parity["within_bound"], name
        assert set(component.files) == {"fp32", "fp16", "int8"} or name == "clip_text"


def test_runtime_runs_graphs_with_external_data(external_bundle):
    bundle = Bundle.open(external_bundle)
    for name, feeds in FEEDS.items():
        component = bundle.component(name)
        for precision in component.files:
            outputs = bundle.session(name, precision).run(feeds(component))
            assert all(np.isfinite(v).all() for v in outputs.values()), (name, precision)


def test_same_outputs_as_the_graph_written_in_one_file(external_bundle, tmp_path):
    inline = tmp_path / "clip_image.fp32.onnx"
    onnx.save_model(onnx.load(str(external_bundle / "clip_image.fp32.onnx")), str(inline))
    bundle = Bundle.open(external_bundle)
    feeds = FEEDS["clip_image"](bundle.component("clip_image"))
    from runtime.bundle.sessions import OnnxSession

    expected = OnnxSession(inline).run(feeds)
    got = bundle.session("clip_image").run(feeds)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)


def test_tampered_data_file_is_refused_at_load(external_bundle, tmp_path):
    copy = shutil.copytree(external_bundle, tmp_path / "bundle")
    data = copy / "sam_encoder.fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one weight changed
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"sam_encoder\.fp32\.onnx\.data: sha256 .* does not match"):
        Bundle.open(copy)


def test_truncated_or_missing_data_file_is_refused_at_load(external_bundle, tmp_path):
    copy = shutil.copytree(external_bundle, tmp_path / "bundle")
    data = copy / "clip_image.int8.onnx.data"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"clip_image\.int8\.onnx\.data: \d+ bytes, the manifest says"):
        Bundle.open(copy)
    data.unlink()
    with pytest.raises(BundleError, match=r"clip_image file clip_image\.int8\.onnx\.data is missing"):
        Bundle.open(copy)


def test_static_int8_reads_and_writes_external_data(tmp_path):
    """The patch encoder's calibrated int8 path (quant_pre_process + quantize_static), not in the tiny profile."""
    out = tmp_path / "patch"
    build_bundle(out, "custom", patch=PatchSpec(image_size=64, precisions=("fp32", "int8")), external_data_threshold=0)
    bundle = Bundle.open(out)
    component = bundle.component("patch_encoder")
    assert set(component.assets) == {"fp32.data", "int8.data"}
    assert component.files["int8"].parity["quantisation"]["method"] == "static"
    pixels = np.full((1, 3, 64, 64), 128, np.float32)
    assert bundle.session("patch_encoder", "int8").run({"pixels": pixels})["patch_tokens"].shape == (1, 64, 120)
    assert sorted(p.name for p in out.iterdir() if "pre" in p.name) == []  # the quantiser's scratch files are gone


def test_small_graphs_stay_in_one_file_by_default(tiny_bundle):
    for component in Bundle.open(tiny_bundle).manifest.components.values():
        assert not [k for k in component.assets if k.endswith(".data")], component.name
        for entry in component.files.values():
            assert external_data(tiny_bundle / entry.path) is None


def test_saving_again_replaces_the_data_file(tmp_path, external_bundle):
    """onnx appends to an existing data file; a re-export must not double it."""

    def model():  # save_graph spends the proto it is given
        return onnx.load(str(external_bundle / "clip_image.fp32.onnx"))

    path = tmp_path / "g.onnx"
    first = save_graph(model(), path, threshold=0).stat().st_size
    assert save_graph(model(), path, threshold=0).stat().st_size == first
    assert save_graph(model(), path, threshold=10**12) is None and not data_path(path).exists()


def test_threshold_setting_names_bad_values(monkeypatch, capsys):
    monkeypatch.setenv(THRESHOLD_ENV, "1.5e3")
    assert threshold_from_env() == 1500
    monkeypatch.setenv(THRESHOLD_ENV, "two gigs")
    with pytest.raises(ValueError, match=rf"{THRESHOLD_ENV} must be a number of bytes .*'two gigs'"):
        threshold_from_env()
    with pytest.raises(SystemExit):
        main(["sam", "--variant", "tiny", "--random-init", "--out", "/tmp/never", "--external-data-threshold", "-1"])
    assert "--external-data-threshold must be >= 0 bytes, not '-1'" in capsys.readouterr().err
