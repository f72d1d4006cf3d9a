"""python -m benchmarks.report: one index of every report under benchmarks/reports/.

Collects the JSON that accuracy, latency, parity and soak wrote, and writes
benchmarks/reports/README.md with the headline figures, the machine, versions
and providers, each linked to its full report and plots.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from . import reporting


def _load(folder: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(folder.glob("*/*.json"))]


def _accuracy(path: Path, data: dict) -> list[str]:
    rows = [r for r in data["rows"] if r["category"] in ("mean", "all (pooled)") or len(
        {x["category"] for x in data["rows"]}) == 1]  # fmt: skip
    cols = ["category", "method", "precision", "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"]
    note = " **(plumbing only: random weights)**" if data.get("plumbing_only") else ""
    return [f"### {data['dataset']}: bundle `{data['bundle_id']}` ({data['profile']}), {data['shots']} shots{note}",
            "", reporting.table(rows, cols), "", f"Full report: [{path.parent.name}/report.md]({path.parent.name}/report.md)", ""]  # fmt: skip


def _latency(path: Path, data: dict) -> list[str]:
    rows = [{"precision": r["precision"], "encoder p50 ms": r["ok_frames"]["image_encoder"]["p50"],
             "OK frame p50 ms": r["ok_frames"]["total"]["p50"],
             "suspicious frame p50 ms": r["suspicious_frames"].get("total", {}).get("p50", math.nan),
             "serve fps": r["pipeline"]["fps"],
             "% matmul peak": 100 * r["image_encoder_gflops"] / data["matmul_peak_gflops"]} for r in data["runs"]]  # fmt: skip
    return [f"### Latency: bundle `{data['bundle_id']}` ({data['profile']}) on {data['machine']['cpu']}, "
            f"{data['machine']['cores']} cores, {', '.join(data['runs'][0]['providers']) if data['runs'] else ''}",
            "", reporting.table(rows, list(rows[0]) if rows else []), "",
            f"Full report with ratios: [{path.parent.name}/latency.md]({path.parent.name}/latency.md)", ""]  # fmt: skip


def _soak(path: Path, data: dict) -> list[str]:
    return [f"### Soak: {data['frames_in_video']} frames, faults injected", "",
            f"captured {data['captured']}, result lines {data['result_lines']}, stale drops {data['dropped_stale']}, "
            f"all accounted: {data['accounted']}; crashes: {len(data['crashes'])}; RSS start/max/end "
            f"{data['rss_mb']['start']}/{data['rss_mb']['max']}/{data['rss_mb']['end']} MB. "
            f"[{path.parent.name}/soak.md]({path.parent.name}/soak.md)", ""]  # fmt: skip


def _parity(path: Path, data: dict) -> list[str]:
    return [f"### Parity: bundle `{data['bundle_id']}` ({data['profile']}): "
            f"[{path.parent.name}/parity.md]({path.parent.name}/parity.md)", ""]


def build(folder: Path = reporting.REPORTS) -> Path:
    machine = reporting.machine()
    lines = ["# lineside benchmark reports", "",
             f"Index written on {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
             f"{', '.join(f'{k} {v}' for k, v in machine['versions'].items())}. Each report names the machine it ran on.",
             ""]  # fmt: skip
    if (folder / "TARGETS.md").is_file():
        lines += ["Where each speed target stands and why: [TARGETS.md](TARGETS.md).", ""]
    writers = {"report.json": _accuracy, "latency.json": _latency, "soak.json": _soak, "parity.json": _parity}
    for path, data in _load(folder):
        if path.name in writers:
            lines += writers[path.name](path, data)
    out = folder / "README.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    out = build()
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
