"""Export one graph, derive its precision variants, and measure each against torch."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch

from runtime.manifest import FileEntry
from runtime.session import OnnxSession

from .onnx_tools import export_graph, make_variant
from .parity import compare, judge, worst
from .writer import BundleWriter

log = logging.getLogger("lineside.export")

Case = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (torch outputs, onnx feeds)


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
) -> dict[str, FileEntry]:
    """Write `name.<precision>.onnx` for each precision and return manifest file entries.

    Each case pairs torch's outputs with the numpy feeds (by graph input name) that
    produced them; give one as `reference` + `feeds` or several as `cases`. The
    graph of every precision runs on every case in onnxruntime and the worst
    figures are kept. fp32 is always exported and must pass its bound. `calibration`
    (feeds) switches int8 to static quantisation (onnx_tools.to_int8).
    """
    cases = [*cases, *([(reference, feeds)] if reference is not None else [])]
    started = time.perf_counter()
    fp32 = writer.path(f"{name}.fp32.onnx")
    export_graph(module, args, fp32, input_names, output_names, dynamic_axes)
    log.info("%s: traced in %.1fs", name, time.perf_counter() - started)
    entries = {}
    for precision in ["fp32", *[p for p in precisions if p != "fp32"]]:
        path = fp32 if precision == "fp32" else make_variant(fp32, precision, calibration)
        session = OnnxSession(path)
        figures = worst([compare(ref, session.run(feed), masks) for ref, feed in cases])
        parity = judge(figures, precision)
        entries[precision] = writer.entry(path.name, parity)
        log.info("%s %s: %.1f MB, within bound: %s", name, precision, path.stat().st_size / 1e6, parity["within_bound"])
    return entries
