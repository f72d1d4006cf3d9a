"""Shared report plumbing: machine facts, tables, JSON + Markdown files, plots.

Every report written through `write` names the machine it was measured on (CPU model and ISA
flags, GPUs, onnxruntime: `runtime.machine.describe()`) under its title: int8 and fp16 figures
hold for that machine, not in general. (The index of every report, their README, is index.py.)
"""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime.machine import describe, summary

REPORTS = Path(__file__).parent / "reports"


def machine() -> dict:
    """This machine as `runtime.machine.describe()` gives it (CPU model, ISA flags, GPUs, onnxruntime),
    with Python, the system and the versions of the packages that run the figures."""
    versions = {}
    for name in ("lineside", "onnxruntime", "onnxruntime-gpu", "numpy", "opencv-python-headless", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        **describe(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def machine_line(described: dict) -> str:
    """The "Measured on: ..." line of a report's header: CPU model and ISA flags (or GPU), from `machine()`'s
    dict. A report from before ISA flags were recorded says so rather than guess."""
    if "onnxruntime" not in described and "onnxruntime" in described.get("versions", {}):  # an older record
        described = {**described, "onnxruntime": described["versions"]["onnxruntime"]}
    extra = [f"Python {described['python']}" if described.get("python") else "", described.get("system", "")]
    return f"Measured on: {', '.join([summary(described), *filter(None, extra)])}."


def with_machine(markdown: str, described: dict) -> str:
    """`markdown` with the machine line under its title, unless it has one already."""
    if "\nMeasured on: " in markdown or markdown.startswith("Measured on: "):
        return markdown
    title, _, rest = markdown.partition("\n")
    if not title.startswith("#"):
        return f"{machine_line(described)}\n\n{markdown}"
    return f"{title}\n\n{machine_line(described)}\n\n{rest.lstrip(chr(10))}"


def random_weights(bundle) -> bool:
    """True when any component of the bundle was exported from random weights."""
    return any(c.source.get("random_init") for c in bundle.manifest.components.values())


def fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write(out: Path, name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """NAME.json and NAME.md under `out`; both name the machine (`data["machine"]`, this one unless given)."""
    data = data if isinstance(data.get("machine"), dict) else {**data, "machine": machine()}
    markdown = with_machine(markdown, data["machine"])
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


def publish(out: Path, name: str, data: dict, markdown: str) -> Path:
    """Write NAME.json and NAME.md under `out`, print the Markdown, return its path."""
    _, md = write(out, name, data, markdown)
    print(md.read_text(encoding="utf-8"))
    return md


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def roc_plot(path: Path, curves: dict[str, tuple[list[int], list[float]]], title: str) -> Path:
    """ROC curves of several (labels, scores) series in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    for name, (labels, scores) in curves.items():
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_plot(path: Path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(groups) * len(series) / 2), 3.6), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + i * width, [0 if math.isnan(v) else v for v in values], width, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=20, fontsize=8)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
