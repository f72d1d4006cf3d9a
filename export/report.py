"""The closing table an export prints: component, precision, size, parity."""

from __future__ import annotations

from pathlib import Path

from runtime.bundle.manifest import Manifest

from .parity import summary


def closing_table(out: Path, manifest: Manifest, seconds: float) -> str:
    rows = [("component", "precision", "MB", "parity vs torch / speed")]
    for name, component in sorted(manifest.components.items()):
        for precision, entry in component.files.items():
            figures = (
                summary(entry.parity)
                if "outputs" in entry.parity
                else f"{entry.parity.get('smoke', {}).get('tokens_per_s', '?')} tokens/s"
            )
            data = component.assets.get(f"{precision}.data")  # external data (graph_files)
            size = entry.bytes + (data.bytes if data else 0)
            rows.append((name, precision, f"{size / 1e6:.1f}" + (" (+data)" if data else ""), figures))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"bundle {manifest.bundle_id} ({manifest.profile}) -> {out}  in {seconds:.1f}s"
    return "\n".join([head, *lines])
