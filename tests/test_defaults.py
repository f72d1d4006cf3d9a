"""One default: serve, detect, the demo and the accuracy report run the detector with the same settings.

The accuracy figures in the README are only the line's figures if the line runs what was measured; a
setting the demo chose for itself (as it once chose map_weight, reference_window and top_fraction) would
make them the demo's alone.
"""

from __future__ import annotations

from benchmarks import accuracy, demo
from runtime import options
from runtime.detect import __main__ as detect_cli
from runtime.detect.detector import Detector
from runtime.serve import __main__ as serve_cli
from runtime.settings import DetectorSettings


def _effective(bundle, detector_settings) -> dict:
    return Detector.from_bundle(bundle, detector_settings).settings.to_dict()


def test_serve_detect_demo_and_accuracy_run_the_same_detector_settings(tiny_bundle, tmp_path):
    serve_args = serve_cli.parser().parse_args(["--source", str(tmp_path), "--bundle", str(tiny_bundle)])
    serve = _effective(tiny_bundle, options.load(serve_args, environ={}).detector)
    detect_args = detect_cli.parser().parse_args(
        [str(tmp_path), "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle)]
    )
    detect = _effective(tiny_bundle, options.load(detect_args, environ={}).detector)
    shown = demo.demo_detector(tiny_bundle, "fp32").settings.to_dict()
    bench_args = accuracy.parser().parse_args(["--bundle", str(tiny_bundle), "--dataset", "elpv"])
    measured = accuracy.detector_for(bench_args, tiny_bundle, "fp32").settings.to_dict()
    assert serve == detect == shown == measured


def test_registered_parts_are_found_by_default_not_set_by_hand():
    """In-place comparison switches itself on for aligned references: auto is the default."""
    assert DetectorSettings().reference_window == -1


def test_a_variant_changes_only_what_it_names(tiny_bundle):
    from benchmarks.draws import variants

    base = Detector.from_bundle(tiny_bundle)
    ((name, other),) = variants(base, ["anywhere:reference_window=0,top_fraction=0"]).items()
    changed = {k for k, v in other.settings.to_dict().items() if base.settings.to_dict()[k] != v}
    assert name == "anywhere" and changed <= {"reference_window", "top_fraction"}
