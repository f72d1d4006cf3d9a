"""A precision is verified where it runs: refused outside its bound (manifest or here), allowed on request,
chosen by auto, cached per machine, and reported by check, results and serve.

The tiny bundle's variants have random weights, so whether one of them holds
its real bound depends on the build and the CPU. These tests set the bound or
the verdict in a copy's manifest so that the outcome is certain on any CPU
(a bound no cosine can reach, or one every cosine meets), and assert what the
runtime does with it, never a measured figure.
"""

import json
import logging
import re
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from runtime.bundle import verify
from runtime.bundle.precision import PrecisionError
from runtime.check import main as check_main
from runtime.detect.detector import Detector
from runtime.machine import cpuid_denies, fingerprint, summary
from runtime.serve import Server, Settings
from runtime.serve.__main__ import parser as serve_parser

UNREACHABLE = {"min_cosine": 1.5, "max_rel_diff": 0.25, "min_mask_iou": 0.8}  # no cosine is above 1
MET = {"min_cosine": -1.0, "max_rel_diff": 1e9, "min_mask_iou": 0.0}  # every figure meets it


def edit_parity(bundle, name: str, precision: str, **fields) -> None:
    """Change one graph's parity record in the bundle's manifest (hashes cover files, not parity)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["components"][name]["files"][precision]["parity"].update(fields)
    path.write_text(json.dumps(manifest))


def outside_at_export(bundle, name: str, precision: str) -> None:
    output = next(iter(json.loads((bundle / "manifest.json").read_text())["components"][name]["outputs"]))["name"]
    edit_parity(bundle, name, precision, within_bound=False, failures=[f"{output}: cosine 0.500000 < 0.98"])


def detector(bundle, tmp_path, **settings) -> Detector:
    return Detector.from_bundle(
        bundle, use_sam=False, text_cache_dir=tmp_path / "text", precision_cache_dir=tmp_path / "verdicts", **settings
    )


def test_outside_its_bound_in_the_manifest_is_refused_with_the_figure_and_what_holds(bundle_copy, tmp_path):
    outside_at_export(bundle_copy, "clip_image", "int8")
    edit_parity(bundle_copy, "clip_image", "fp16", bound=MET, within_bound=True)
    with pytest.raises(PrecisionError) as refused:
        detector(bundle_copy, tmp_path, precision="int8")
    message = str(refused.value)
    assert "clip_image int8 is outside its parity bound" in message
    assert "at export image_embedding: cosine 0.500000 < 0.98" in message and "measured here: " in message
    assert "Precisions of clip_image that hold here: fp32, fp16" in message
    assert "--allow-unverified-precision" in message and "auto" in message


def test_outside_its_bound_on_this_machine_is_refused_though_the_manifest_says_it_holds(bundle_copy, tmp_path):
    edit_parity(bundle_copy, "clip_image", "int8", bound=UNREACHABLE, within_bound=True)
    edit_parity(bundle_copy, "clip_image", "fp16", bound=UNREACHABLE, within_bound=True)
    with pytest.raises(PrecisionError, match=r"\(here image_embedding: cosine -?[01]\.\d{6} < 1\.5") as refused:
        detector(bundle_copy, tmp_path, precision="int8")
    assert "at export" not in str(refused.value).split("; measured")[0]  # the manifest's verdict was fine
    assert "that hold here: fp32;" in str(refused.value)


def test_allowed_on_request_it_runs_with_a_warning_and_results_say_so(bundle_copy, tmp_path, caplog):
    outside_at_export(bundle_copy, "clip_image", "int8")
    with caplog.at_level(logging.WARNING, logger="lineside.precision"):
        allowed = detector(bundle_copy, tmp_path, precision="int8", allow_unverified_precision=True)
    assert allowed.graphs()["clip_image"]["precision"] == "int8"
    assert any(
        "allow_unverified_precision is on" in r.getMessage() and "cosine 0.500000" in r.getMessage()
        for r in caplog.records
    )
    result = allowed.detect(np.full((64, 64, 3), 90, np.uint8), "screw")
    assert result.precisions == {"clip_image": "int8", "clip_text": "fp32"}
    assert result.to_dict()["precisions"] == result.precisions and result.providers == ("CPUExecutionProvider",)


def test_auto_runs_fp32_when_no_variant_holds_and_says_why(bundle_copy, tmp_path, caplog):
    outside_at_export(bundle_copy, "clip_image", "int8")
    edit_parity(bundle_copy, "clip_image", "fp16", bound=UNREACHABLE)
    with caplog.at_level(logging.INFO, logger="lineside.precision"):
        auto = detector(bundle_copy, tmp_path, precision="auto")
    assert auto.graphs()["clip_image"]["precision"] == "fp32"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "clip_image: auto runs fp32" in said and "fp16 outside its bound" in said and "int8 outside" in said


def test_auto_runs_the_fastest_of_those_that_hold(bundle_copy, tmp_path, caplog):
    for precision in ("fp16", "int8"):
        edit_parity(bundle_copy, "clip_image", precision, bound=MET, within_bound=True)
    with caplog.at_level(logging.INFO, logger="lineside.precision"):
        auto = detector(bundle_copy, tmp_path, precision="auto")
    timed = next(r.getMessage() for r in caplog.records if "clip_image: auto runs" in r.getMessage())
    times = {p: float(ms) for p, ms in re.findall(r"(fp32|fp16|int8) ([0-9.]+) ms", timed)}
    assert set(times) == {"fp32", "fp16", "int8"}
    assert times[auto.graphs()["clip_image"]["precision"]] == min(times.values())  # (rounded in the log)
    assert auto.settings.precision == "auto"


def test_a_verdict_is_measured_once_per_machine_and_kept(bundle_copy, tmp_path, monkeypatch):
    edit_parity(bundle_copy, "clip_image", "int8", bound=MET, within_bound=True)
    detector(bundle_copy, tmp_path, precision="int8")
    kept = list((tmp_path / "verdicts").glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["component"] == "clip_image"

    def never(*_):
        raise AssertionError("measured again")

    monkeypatch.setattr(verify.Probe, "figures", never)
    assert detector(bundle_copy, tmp_path, precision="int8").graphs()["clip_image"]["precision"] == "int8"
    monkeypatch.setattr(verify, "fingerprint", lambda: "another machine")
    with pytest.raises(AssertionError, match="measured again"):
        detector(bundle_copy, tmp_path, precision="int8")


def test_check_prints_every_variant_measured_here_with_its_verdict(bundle_copy, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    edit_parity(bundle_copy, "clip_image", "int8", bound=UNREACHABLE, within_bound=True)
    outside_at_export(bundle_copy, "sam_encoder", "int8")
    edit_parity(bundle_copy, "clip_image", "fp16", bound=MET, within_bound=True)
    assert check_main([str(bundle_copy)]) == 1  # clip_image int8's claim is false here
    assert check_main([str(bundle_copy), "--allow", "int8", "--allow", "fp16"]) == 0
    out = capsys.readouterr().out.split("every graph loaded and ran")[-1]  # the second run's report
    rows = {tuple(line.split()[:2]): line for line in out.split("precision variants against fp32")[1].splitlines()}
    assert rows[("clip_image", "int8")].split()[4:6] == ["cos>=1.5", "OUTSIDE"]  # here, whatever the CPU
    assert rows[("clip_image", "int8")].endswith("holds [1]")  # at export
    assert " holds " in rows[("clip_image", "fp16")] and "OUTSIDE [1]" in rows[("sam_encoder", "int8")]
    assert "outside their parity bound: clip_image int8" in out and "sam_encoder int8" in out
    assert "random weights (source.random_init)" in out and summary(verify.describe()).split(";")[0] in out
    assert list((tmp_path / "cache" / "lineside" / "precision").glob("*.json"))  # and the cache refreshed


def test_readyz_and_status_name_each_graphs_precision_and_providers(tiny_bundle, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "part.png"), np.full((64, 64, 3), 90, np.uint8))
    settings = Settings.of(
        source=str(folder),
        bundle=tiny_bundle,
        port=0,
        results=tmp_path / "r.jsonl",
        explain=False,
        use_sam=False,
        text_cache_dir=tmp_path / "text",
    )
    server = Server(settings, detector=Detector.from_bundle(tiny_bundle, settings.detector)).start()
    try:
        url = f"http://127.0.0.1:{server.web.port}"
        try:
            body = urllib.request.urlopen(f"{url}/readyz", timeout=5).read().decode()
        except urllib.error.HTTPError as e:  # not ready (an empty folder): the graphs are named all the same
            body = e.read().decode()
        assert "graph clip_image fp32 on CPUExecutionProvider (requested cpu)" in body
        assert "graph clip_text fp32 on CPUExecutionProvider" in body
        status = json.loads(urllib.request.urlopen(f"{url}/api/status", timeout=5).read())
        assert status["graphs"]["clip_image"] == {
            "precision": "fp32",
            "providers": ["CPUExecutionProvider"],
            "requested": ["cpu"],
        }
    finally:
        server.shutdown()


def test_precision_flags_reach_every_command():
    args = serve_parser().parse_args(
        ["--precision", "auto", "--allow-unverified-precision", "--precision-cache-dir", "/tmp/v"]
    )
    assert (args.precision, args.allow_unverified_precision, str(args.precision_cache_dir)) == ("auto", True, "/tmp/v")
    with pytest.raises(ValueError, match="setting precision: 'fp8' is not one of fp32, fp16, int8, auto"):
        Settings.of(precision="fp8")


def test_the_machine_is_what_cpuid_says_and_has_a_fingerprint(monkeypatch):
    import numpy._core._multiarray_umath as umath

    monkeypatch.setattr(umath, "__cpu_features__", {"AVX2": True, "AVX512VNNI": False}, raising=False)
    assert cpuid_denies({"avx2", "avx512_vnni", "sse4_2"}) == {"avx512_vnni"}  # an emulated CPU, the host's /proc
    monkeypatch.undo()
    assert fingerprint() == fingerprint() and len(fingerprint()) == 16
    assert "ISA flags not recorded" in summary({"cpu": "AMD EPYC", "cores": 2})


def test_the_benchmarks_refuse_it_too_unless_allowed(bundle_copy, tmp_path, capsys, monkeypatch):
    from benchmarks import latency

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    outside_at_export(bundle_copy, "clip_image", "int8")
    argv = ["--bundle", str(bundle_copy), "--precisions", "int8", "--frames", "2", "--no-torch", "--out", str(tmp_path)]
    assert latency.main(argv) == 1
    assert "latency failed: clip_image int8 is outside its parity bound" in capsys.readouterr().err
