"""python -m benchmarks.index: one index of every report under benchmarks/reports/, their README.

Collects the JSON that accuracy, latency, parity and soak wrote, and writes
benchmarks/reports/README.md with the headline figures, the machine, versions
and providers, each linked to its full report and plots. (The plumbing every report is
written with, tables, files and the machine line, is reporting.py.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import reporting


def _load(folder: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(folder.glob("*/*.json"))]


def _where(data: dict) -> list[str]:
    """The machine a report was measured on, and what its JSON says to read it with (`caveats`)."""
    machine = data.get("machine") or (data.get("run") or {}).get("machine")
    lines = [reporting.machine_line(machine) if machine else "Measured on: a machine the report does not name."]
    caveats = data.get("caveats", [])
    return [*lines, *(["", "Caveats:", "", *[f"- {c}" for c in caveats]] if caveats else []), ""]


def _accuracy(path: Path, data: dict) -> list[str]:
    rows = [
        r
        for r in data["rows"]
        if r["category"] in ("mean", "all (pooled)") or len({x["category"] for x in data["rows"]}) == 1
    ]
    cols = ["category", "method", "precision", "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"]
    if any("shots" in r for r in rows):  # a report over several shot counts: say which row is which, in order
        cols.insert(1, "shots")
        rows = sorted(rows, key=lambda r: (r["category"], r.get("shots", 0), r["precision"], r["method"]))
    note = " **(plumbing only: random weights)**" if data.get("plumbing_only") else ""
    link = f"[{path.parent.name}/report.md]({path.parent.name}/report.md)"
    return [
        f"### {data['dataset']}: bundle `{data['bundle_id']}` ({data['profile']}), {data['shots']} shots{note}",
        "",
        *_where(data),
        reporting.table(rows, cols),
        "",
        f"Full report: {link}",
        "",
    ]


def _serve_fps(data: dict, run: dict) -> float:
    """Serve's median fps over the interleaved trials at this run's precision (serve_vs_detect.py); a report
    from before them has one serve run per precision."""
    compared = data.get("serve_vs_detect")
    if compared:
        return compared["modes"]["serve"]["fps"]["median"] if compared["precision"] == run["precision"] else math.nan
    return run.get("pipeline", {}).get("fps", math.nan)


def _latency(path: Path, data: dict) -> list[str]:
    rows = [
        {
            "precision": r["precision"],
            "encoder p50 ms": r["ok_frames"]["image_encoder"]["p50"],
            "OK frame p50 ms": r["ok_frames"]["total"]["p50"],
            "suspicious frame p50 ms": r["suspicious_frames"].get("total", {}).get("p50", math.nan),
            "serve fps": _serve_fps(data, r),
            "% matmul peak": 100 * r["image_encoder_gflops"] / data["matmul_peak_gflops"],
        }
        for r in data["runs"]
    ]
    return [
        f"### Latency: bundle `{data['bundle_id']}` ({data['profile']}), "
        f"{', '.join(data['runs'][0]['providers']) if data['runs'] else 'no runs'}",
        "",
        *_where(data),
        reporting.table(rows, list(rows[0]) if rows else []),
        "",
        f"Full report with ratios: [{path.parent.name}/latency.md]({path.parent.name}/latency.md)",
        "",
    ]


def _soak(path: Path, data: dict) -> list[str]:
    if "criteria" in data:  # the soak report with pass/fail criteria
        verdict = "PASS" if all(c["pass"] for c in data["criteria"].values()) else "FAIL"
        figures = "; ".join(f"{name}: {c['value']}" for name, c in data["criteria"].items())
        return [
            f"### Soak: {data['frames_in_video']} frames, faults injected: {verdict}",
            "",
            *_where(data),
            f"{figures}. [{path.parent.name}/soak.md]({path.parent.name}/soak.md)",
            "",
        ]
    return [
        f"### Soak: {data['frames_in_video']} frames, faults injected",
        "",
        *_where(data),
        f"captured {data['captured']}, result lines {data['result_lines']}, stale drops {data['dropped_stale']}, "
        f"all accounted: {data['accounted']}; crashes: {len(data['crashes'])}; RSS start/max/end "
        f"{data['rss_mb']['start']}/{data['rss_mb']['max']}/{data['rss_mb']['end']} MB. "
        f"[{path.parent.name}/soak.md]({path.parent.name}/soak.md)",
        "",
    ]


def _parity(path: Path, data: dict) -> list[str]:
    link = f"[{path.parent.name}/parity.md]({path.parent.name}/parity.md)"
    return [f"### Parity: bundle `{data['bundle_id']}` ({data['profile']}): {link}", "", *_where(data)]


def _linked(path: Path, data: dict) -> list[str]:
    """A report the index has no summary for: its title, its machine, a link."""
    md = path.with_suffix(".md")
    title = md.read_text(encoding="utf-8").partition("\n")[0].lstrip("# ") if md.is_file() else path.parent.name
    return [f"### {title}: [{path.parent.name}/{md.name}]({path.parent.name}/{md.name})", "", *_where(data)]


def build(folder: Path = reporting.REPORTS) -> Path:
    machine = reporting.machine()
    lines = [
        "# lineside benchmark reports",
        "",
        "Every figure below holds for the machine it was measured on, named under each heading: int8 and "
        "fp16 results depend on the CPU's instruction set (VNNI, AVX-512, F16C) or the GPU, so a precision "
        "choice made on one machine is not a rule for another. `python -m runtime.check BUNDLE` measures each "
        "variant on the box that will run it, and the runtime refuses one outside its bound there.",
        "",
        f"Index written on {reporting.machine_line(machine).removeprefix('Measured on: ')}",
        "",
    ]
    if (folder / "TARGETS.md").is_file():
        lines += ["Where each speed target stands and why: [TARGETS.md](TARGETS.md).", ""]
    writers = {"report.json": _accuracy, "latency.json": _latency, "soak.json": _soak, "parity.json": _parity}
    for path, data in _load(folder):
        if path.name == "report.json" and "dataset" not in data:  # another benchmark's report: linked, not summed up
            lines += _linked(path, data)
        elif path.name in writers:
            lines += writers[path.name](path, data)
    out = folder / "README.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.index",
        description="Rewrite benchmarks/reports/README.md, the index of every committed report, from their JSON.",
    )
    parser.parse_args(argv)  # no options: only --help, which must not rewrite anything
    out = build()
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
