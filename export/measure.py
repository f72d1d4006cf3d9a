"""Export one graph, derive its precision variants, and measure each against torch.

Each figure is recorded with the machine that measured it (`runtime.machine`):
int8 and fp16 results depend on the CPU's instruction set, so a figure without
its CPU, onnxruntime version and providers says little on another box.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from runtime.bundle.manifest import FileEntry
from runtime.bundle.sessions import OnnxSession
from runtime.machine import describe

from .graph_files import external_data
from .int8 import int8_format
from .onnx_tools import export_graph, make_variant
from .optimize import Optimisation, op_counts, optimise_graph
from .parity import compare, judge, worst
from .writer import BundleWriter

log = logging.getLogger("lineside.export")

Case = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (torch outputs, onnx feeds)


@dataclass
class Graphs:
    """A component's graph files by precision, and their external data files as assets
    keyed "<precision>.data" (the runtime hashes every asset at load)."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    assets: dict[str, FileEntry] = field(default_factory=dict)


def export_measured(
    writer: BundleWriter,
    name: str,
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    reference: dict[str, np.ndarray] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    cases: Sequence[Case] = (),
    precisions: Sequence[str] = ("fp32",),
    dynamic_axes: dict | None = None,
    masks: tuple[str, ...] = (),
    calibration: list[dict[str, np.ndarray]] | None = None,
    optimise: Optimisation | None = None,
    features: dict[str, int] | None = None,
) -> Graphs:
    """Write `name.<precision>.onnx` for each precision and return manifest file entries.

    Each case pairs torch's outputs with the numpy feeds (by graph input name) that
    produced them; give one as `reference` + `feeds` or several as `cases`. The
    graph of every precision runs on every case in onnxruntime and the worst
    figures are kept. fp32 is always exported and must pass its bound. `calibration`
    (feeds) switches int8 to static quantisation (int8.to_int8). `optimise`: fold and fuse
    the fp32 graph before any variant is made (optimize.py); each variant's parity then
    records its operator counts as `graph`. `features`: output -> its feature axis where
    that is not the last (an NCHW map's channels: 1); its cosines are taken per position
    over that axis, and the parity record says so (`feature_axes`).
    """
    cases = [*cases, *([(reference, feeds)] if reference is not None else [])]
    threshold = writer.external_data_threshold
    started = time.perf_counter()
    fp32 = writer.path(f"{name}.fp32.onnx")
    export_graph(module, args, fp32, input_names, output_names, dynamic_axes, threshold)
    log.info("%s: traced in %.1fs", name, time.perf_counter() - started)
    made = optimise_graph(fp32, optimise, threshold) if optimise else None
    keep = optimise.fp16_keep_fp32 if optimise else ()
    graphs = Graphs()
    for precision in ["fp32", *[p for p in precisions if p != "fp32"]]:
        path = fp32 if precision == "fp32" else make_variant(fp32, precision, calibration, threshold, keep)
        parity = _measure(path, precision, cases, masks, calibration, features or {})
        if made:
            parity["graph"] = _graph_record(made, path, precision, keep)
        graphs.files[precision] = writer.entry(path.name, parity)
        if (data := external_data(path)) is not None:
            graphs.assets[f"{precision}.data"] = writer.entry(data.name)
        size = sum(f.bytes for f in (graphs.files[precision], graphs.assets.get(f"{precision}.data")) if f)
        log.info("%s %s: %.1f MB, within bound: %s", name, precision, size / 1e6, parity["within_bound"])
    return graphs


def _features_last(pair: tuple[dict, dict], features: dict[str, int]) -> tuple[dict, dict]:
    """Both sides' outputs with each one's feature axis moved last, where row cosines are taken.

    SAM's image embeddings (1, 256, 64, 64) are one 256-vector per position, which is what
    the decoder attends to; rows along the last axis would be 64 pixels of one channel, and
    in the padded margin, where a channel is nearly constant and near zero, their cosine
    measures rounding noise rather than the embedding (fp16 there: 0.975 along width,
    0.99990 per position, on SAM vit_b).
    """
    return tuple({n: np.moveaxis(a, features[n], -1) if n in features else a for n, a in side.items()} for side in pair)


def _graph_record(made: dict, path, precision: str, keep: tuple[str, ...]) -> dict:
    """How an optimised graph was made and what it holds: operator counts, fp32 islands of fp16."""
    record = made | {"ops": op_counts(onnx.load(str(path), load_external_data=False))}
    return record | ({"fp32_ops": list(keep)} if precision == "fp16" else {})


def _measure(path, precision: str, cases: Sequence[Case], masks: tuple[str, ...], calibration, features) -> dict:
    """Run the graph on every case; the judged figures, where they were measured, and how
    an int8 graph was quantised."""
    session = OnnxSession(path)
    figures = worst([compare(*_features_last((ref, session.run(feed)), features), masks) for ref, feed in cases])
    parity = judge(figures, precision) | {"measured_on": describe(session.providers)}
    if features:
        parity["feature_axes"] = dict(features)
    if precision == "int8":
        parity["quantisation"] = int8_format(bool(calibration)).to_dict()
    return parity
