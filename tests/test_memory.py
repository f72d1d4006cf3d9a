"""benchmarks.memory on the tiny bundle, and serve holding one session per graph after start.

Memory itself is a benchmark figure (benchmarks/reports/memory/); these tests check only what
cannot drift with the machine: the report's fields and how they relate, and which sessions live."""

from __future__ import annotations

import gc
import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import memory
from runtime.bundle.sessions import OnnxSession
from runtime.detect.detector import Detector


def test_memory_report_fields_are_consistent(tiny_bundle, tmp_path):
    assert memory.main(["--bundle", str(tiny_bundle), "--frames", "2", "--warm-up", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "memory.json").read_text())
    (row,) = data["bundles"]
    assert row["peak_rss_bytes"] >= row["rss_after_warm_up_bytes"] > 0
    assert row["peak_rss_bytes"] >= row["rss_at_end_bytes"] > 0
    assert row["frames_inspected"] >= 3
    files = row["graph_files"]
    assert {f["graph"] for f in files} == set(row["graphs"]) and files
    assert row["graph_bytes"] == sum(f["bytes"] for f in files)
    assert row["graph_bytes"] == sum((tiny_bundle / f["path"]).stat().st_size for f in files)
    assert row["peak_over_graph_bytes"] == pytest.approx(row["peak_rss_bytes"] / row["graph_bytes"])
    assert data["baseline_rss_bytes"] > 0
    assert data["session_options"]["enable_cpu_mem_arena"] in (True, False)
    markdown = (tmp_path / "memory.md").read_text()
    assert "Measured on: " in markdown and str(tiny_bundle) in markdown


def _live_sessions(folder: Path) -> Counter:
    """Graph files of `folder` by how many live onnxruntime sessions hold them."""
    gc.collect()
    return Counter(o.path.name for o in gc.get_objects() if type(o) is OnnxSession and o.path.parent == folder)


@pytest.mark.parametrize("precision", ["fp16", "auto"])
def test_after_start_one_session_per_graph_is_alive(bundle_copy, tmp_path, precision):
    """fp16 opens the fp32 graph too, as the parity check's reference, and auto opens every precision to
    time it: after start only the graph each part runs may still be held, or serve keeps a weight twice."""
    detector = Detector.from_bundle(
        bundle_copy,
        precision=precision,
        allow_unverified_precision=True,
        precision_cache_dir=tmp_path / "verdicts",
        text_cache_dir=tmp_path / "text",
    )
    running = {f"{name}.{g['precision']}.onnx" for name, g in detector.graphs().items()}
    assert _live_sessions(bundle_copy) == Counter(running)
    if precision == "fp16":  # every graph with a variant runs it, so its check opened the fp32 as well
        assert all(".fp16." in name for name in running if name.startswith("clip_image"))
