"""serve refuses at start what runtime.check refuses, with check's own reason; and check's exit status
holds the manifest to its parity claims on this machine.

Each bundle is a copy of the tiny one damaged the way a hand or a careless tool would (a field edited,
weights overwritten and the file rehashed): nothing here is mocked, the loader, the graphs and serve's
command line run as they do on the box.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from runtime.bundle.loader import file_sha256
from runtime.bundle.manifest import MANIFEST_NAME
from runtime.check import main as check_main
from runtime.serve.__main__ import main as serve_main
from tests.test_precision import MET, UNREACHABLE, edit_parity


def _edit(folder, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _nan_weights(folder, component: str) -> None:
    """Every weight of `component`'s fp32 graph set to NaN, and the manifest re-signed to match."""
    path = folder / f"{component}.fp32.onnx"
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size > 16:
            tensor.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), tensor.name))
    onnx.save(model, str(path))
    entry = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    _edit(folder, lambda d: d["components"][component]["files"]["fp32"].update(entry))


def _prep(component: str, **fields):
    return lambda folder: _edit(folder, lambda d: d["components"][component]["preprocessing"].update(fields))


REFUSED = {
    "lanczos": (_prep("clip_image", interpolation="lanczos"), "preprocessing.interpolation str 'lanczos' is unknown"),
    "sam lanczos": (_prep("sam_encoder", interpolation="lanczos"), "interpolation str 'lanczos' is unknown"),
    "sam target_length 10**6": (_prep("sam_encoder", target_length=10**6), "target_length must be a positive int"),
    "sam decoder target_length": (_prep("sam_decoder", target_length=512), "target_length 512 differs from"),
    "image weights NaN": (lambda f: _nan_weights(f, "clip_image"), "clip_image (fp32) produced NaN or inf"),
    "text weights NaN": (lambda f: _nan_weights(f, "clip_text"), "clip_text (fp32) produced NaN or inf"),
    "sam decoder weights NaN": (lambda f: _nan_weights(f, "sam_decoder"), "sam_decoder (fp32) produced NaN or inf"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_serve_refuses_at_start_what_check_refuses_with_the_same_line(bundle_copy, tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    damage, match = REFUSED[name]
    damage(bundle_copy)
    assert check_main([str(bundle_copy)]) == 1
    checked = capsys.readouterr().err
    assert checked.startswith("bundle check failed: ") and checked.count("\n") == 1 and match in checked, checked
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.full((64, 64, 3), 120, np.uint8))
    results = tmp_path / "results.jsonl"
    argv = ["--bundle", str(bundle_copy), "--source", str(frames), "--results", str(results), "--port", "0"]
    assert serve_main([*argv, "--no-explain"]) == 2
    refused = capsys.readouterr().err
    assert refused == "serve refused to start: " + checked.removeprefix("bundle check failed: "), refused
    assert not results.exists() or not results.read_text()  # no frame was inspected


def test_serve_starts_on_the_intact_tiny_bundle(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.full((64, 64, 3), 120, np.uint8))
    results = tmp_path / "results.jsonl"
    argv = ["--bundle", str(tiny_bundle), "--source", str(frames), "--results", str(results), "--port", "0"]
    assert serve_main([*argv, "--no-explain"]) == 0, capsys.readouterr().err
    assert [json.loads(x)["frame_id"] for x in results.read_text().splitlines()] == [1]


def _every_variant_met(bundle) -> None:
    """Every fp16 / int8 bound set to one any figure meets: the tiny bundle's random weights hold their
    real bounds or not by CPU, and these tests must fail for the one graph they damage alone."""
    for name, component in json.loads((bundle / MANIFEST_NAME).read_text())["components"].items():
        for precision in component["files"]:
            if precision != "fp32" and component["kind"] == "onnx":
                edit_parity(bundle, name, precision, bound=MET, within_bound=True)


def test_check_fails_when_a_variant_the_manifest_calls_within_bound_is_outside_it_here(bundle_copy, capsys):
    """A tampered int8 graph: the manifest (rehashed) still claims its export figures; here it misses."""
    _every_variant_met(bundle_copy)
    path = bundle_copy / "clip_image.int8.onnx"
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype in (np.int8, np.uint8) and values.size > 16:  # the quantised weights
            tensor.CopyFrom(numpy_helper.from_array(~values, tensor.name))  # each one mirrored
    onnx.save(model, str(path))
    entry = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    _edit(bundle_copy, lambda d: d["components"]["clip_image"]["files"]["int8"].update(entry))
    edit_parity(bundle_copy, "clip_image", "int8", within_bound=True, bound={"min_cosine": 0.9, "max_rel_diff": 1e9})
    assert check_main([str(bundle_copy)]) == 1
    captured = capsys.readouterr()
    assert "OUTSIDE" in captured.out.split("precision variants against fp32")[1]  # the table is still printed
    line = captured.err
    assert line.count("\n") == 1 and line.startswith("bundle check failed: the manifest says these variants hold")
    assert "clip_image int8 (here image_embedding: cosine" in line and "--allow int8" in line
    assert check_main([str(bundle_copy), "--allow", "int8"]) == 0


def test_check_passes_a_variant_the_manifest_itself_records_outside_and_allow_names_a_precision(bundle_copy, capsys):
    _every_variant_met(bundle_copy)
    edit_parity(bundle_copy, "clip_image", "int8", bound=UNREACHABLE, within_bound=False, failures=["x: 0.5 < 1.5"])
    assert check_main([str(bundle_copy)]) == 0  # the manifest is honest: the runtime refuses int8, nothing is false
    capsys.readouterr()
    with pytest.raises(SystemExit):
        check_main([str(bundle_copy), "--allow", "fp32"])  # fp32 is the reference, never measured against itself
