"""The benchmark harnesses run end to end on the tiny bundle (plumbing, not figures)."""

import argparse
import json
from pathlib import Path

from benchmarks import accuracy, index, latency, parity, reporting, serve_vs_detect
from benchmarks.flops import graph_flops, matmul_peak_gflops
from runtime.bundle.loader import Bundle


def test_latency_runs_and_reports_ratios(tiny_bundle, tmp_path):
    # plumbing: the tiny bundle's random-weight int8 SAM encoder may be outside its bound, and runs all the same
    args = argparse.Namespace(
        bundle=tiny_bundle,
        precisions=["fp32", "int8"],
        providers=["cpu"],
        frames=4,
        trials=1,
        trial_frames=2,
        serve_precision=None,
        caveat=["plumbing: the tiny bundle"],
        threads=None,
        torch=True,
        torch_device="cpu",
        torch_fp16=False,
        peer=False,
        allow_unverified_precision=True,
    )
    data = latency.run(args)
    assert [r["precision"] for r in data["runs"]] == ["fp32", "int8"]
    run = data["runs"][0]
    assert {"image_encoder", "total"} <= set(run["ok_frames"]) and "sam_encoder" in run["suspicious_frames"]
    assert data["serve_vs_detect"]["precision"] == "fp32" and data["torch_eager"]["image_encoder_ms"]["p50"] > 0
    md = latency.markdown(data)
    assert "ORT fp32 vs torch eager float32 on cpu" in md and "## Serve against the detector (fp32" in md
    assert "Caveats:\n\n- plumbing: the tiny bundle" in md
    assert index._serve_fps(data, run) == data["serve_vs_detect"]["modes"]["serve"]["fps"]["median"] > 0


def test_serve_and_detect_trials_alternate_and_account_for_cpu(tiny_bundle):
    compared = serve_vs_detect.compare(tiny_bundle, latency.frames(3), latency.frames(2, seed=9), trials=2)
    assert compared["order"] == ["detect", "serve", "decode"] * 2
    assert [t["index"] for t in compared["trials"]] == [0, 0, 0, 1, 1, 1]
    serves = [t for t in compared["trials"] if t["mode"] == "serve"]
    assert all(t["result_lines"] == t["frames"] == 3 for t in serves)  # the results log was on, one line a frame
    assert all(t["steady_frames"] == 2 and t["first_frame_ms"] > 0 for t in compared["trials"])
    for mode in ("detect", "serve", "decode"):
        for figure in ("fps", "cpu_ms_per_frame"):
            s = compared["modes"][mode][figure]
            assert s["n"] == 2 and 0 < s["min"] <= s["p25"] <= s["median"] <= s["p75"] <= s["max"]
        trials = [t for t in compared["trials"] if t["mode"] == mode]
        cpu = sorted(1e3 * t["cpu_s"] / t["steady_frames"] for t in trials)
        assert compared["modes"][mode]["cpu_ms_per_frame"]["median"] == (cpu[0] + cpu[1]) / 2
    h = compared["headline"]
    detect, serve = compared["modes"]["detect"], compared["modes"]["serve"]
    assert h["fps_ratio"] == serve["fps"]["median"] / detect["fps"]["median"]
    both = detect["cpu_ms_per_frame"]["median"] + compared["modes"]["decode"]["cpu_ms_per_frame"]["median"]
    assert h["cpu_bound_fps"]["serve"] == compared["threads"]["cores"] * 1e3 / serve["cpu_ms_per_frame"]["median"]
    assert h["detect_plus_decode_cpu_ms_per_frame"] == both and h["cpu_ratio"] == h["serve_cpu_ms_per_frame"] / both
    for timeline in compared["timeline_ms_per_frame"].values():  # serve's and detect-only's
        assert {"preprocess", "encoder", "results write", "waiting for a frame"} <= set(timeline["rows"])
        assert abs(timeline["accounted_ms_per_frame"] - timeline["wall_ms_per_frame"]) < 1e-6
    assert compared["load_1min"]["n"] == 6 and compared["load_1min"]["min"] >= 0
    assert compared["threads"]["intra_op_threads_observed"] >= 1 and compared["threads"]["decode_threads"] == 2
    md = "\n".join(serve_vs_detect.markdown(compared))
    assert "serve / detect-only fps" in md and "detect-only + decoding" in md and "Thread budget" in md


def test_flops_of_a_known_graph(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    flops = graph_flops(bundle.file_path(bundle.component("clip_image").files["fp32"]))
    # 4 blocks x (qkv + out + 2 mlp) on 17 tokens of width 64, plus the V-V path: order 10 MFLOP
    assert 5e6 < flops < 5e7
    assert matmul_peak_gflops(size=256, repeats=2) > 0.1


def test_random_weight_accuracy_is_labelled_plumbing_only(tiny_bundle, tmp_path, capsys):
    code = accuracy.main(
        [
            "--bundle",
            str(tiny_bundle),
            "--dataset",
            f"synthetic:{tmp_path / 'synth'}",
            "--shots",
            "1",
            "--limit",
            "3",
            "--categories",
            "brick",
            "--out",
            str(tmp_path / "acc"),
        ]
    )
    assert code == 0
    assert "Plumbing only" in (tmp_path / "acc" / "report.md").read_text()
    assert json.loads((tmp_path / "acc" / "report.json").read_text())["plumbing_only"] is True
    assert (tmp_path / "acc" / "categories.png").stat().st_size > 1000


def test_parity_without_weights_shows_export_figures(tiny_bundle):
    args = argparse.Namespace(bundle=tiny_bundle, clip_checkpoint=None)
    data = parity.run(args)
    assert "cannot be rebuilt" in data["note"] and set(data["export_parity"]) == {"fp32", "fp16", "int8"}
    assert "Export-time figures" in parity.markdown(data)


def test_report_index_links_every_report(tmp_path):
    folder = tmp_path / "reports"
    (folder / "soak").mkdir(parents=True)
    (folder / "soak" / "soak.json").write_text(
        json.dumps(
            {
                "frames_in_video": 10,
                "captured": 10,
                "result_lines": 8,
                "dropped_stale": 2,
                "accounted": True,
                "crashes": [],
                "rss_mb": {"start": 1, "max": 2, "end": 2},
                "caveats": ["int8 is stale"],
            }
        )
    )
    text = index.build(folder).read_text()
    assert "Soak: 10 frames" in text and "(soak/soak.md)" in text
    assert "Measured on: a machine the report does not name." in text and "- int8 is stale" in text


def test_every_new_report_names_the_machine_it_was_measured_on(tmp_path):
    from runtime.machine import describe

    json_path, md_path = reporting.write(tmp_path, "r", {"figure": 1}, "# A report\n\nfigures\n")
    text, isa = md_path.read_text(), describe()["isa"]
    assert text.startswith("# A report\n\nMeasured on: ") and "onnxruntime" in text and text.endswith("figures\n")
    assert all(flag in text for flag, present in isa.items() if present)
    assert json.loads(json_path.read_text())["machine"]["isa"] == isa


def test_ablation_bundles_are_compared_in_one_run(tiny_bundle, tmp_path):
    from export.build import build_bundle
    from export.clip_export import ClipSpec

    no_vv = tmp_path / "no-vv"
    build_bundle(no_vv, "custom", ClipSpec(arch="lineside-tiny-clip", no_vv=True))
    code = accuracy.main(
        [
            "--bundle",
            str(tiny_bundle),
            "--compare",
            str(no_vv),
            "--dataset",
            f"synthetic:{tmp_path / 'synth'}",
            "--shots",
            "0",
            "--limit",
            "2",
            "--categories",
            "grass",
            "--out",
            str(tmp_path / "acc"),
        ]
    )
    assert code == 0
    methods = {r["method"] for r in json.loads((tmp_path / "acc" / "report.json").read_text())["rows"]}
    assert {f"lineside[{Path(tiny_bundle).name}]", "lineside[no-vv]"} <= methods
