"""Torch -> ONNX, and the fp16 / int8 variants of an exported graph.

The legacy TorchScript exporter (`dynamo=False`) is used throughout: torch's
dynamo exporter fails on SAM's decoder with a dynamic number of points and can
rename outputs, while this one keeps exactly the names we give it. Every graph
is traced into a scratch folder (over 2 GB the legacy exporter writes one file
per tensor there) and then written in the bundle's layout by
`graph_files.save_graph`: one .onnx, plus one .onnx.data above the threshold.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from .attention import DOMAIN
from .graph_files import DEFAULT_THRESHOLD, check_graph, graph_outputs, save_graph
from .int8 import to_int8

log = logging.getLogger("lineside.export")

OPSET = 17  # LayerNormalization as one op; supported by TensorRT 8.6+ and ORT 1.14+


def export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    threshold: int = DEFAULT_THRESHOLD,
) -> Path:
    """Trace `module` on `args` and write `path` (+ `path`.data when its tensors exceed `threshold`)."""
    module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused fast path has no ONNX symbolic; trace the plain ops.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
            traced = Path(scratch) / path.name
            _export(module, args, traced, input_names, output_names, dynamic_axes)
            model = onnx.load(str(traced))  # gathers the per-tensor files of a graph over 2 GB
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    save_graph(model, path, threshold)
    del model
    check_graph(path)
    found = graph_outputs(path)
    if found != list(output_names):
        raise RuntimeError(f"exported {path.name} has outputs {found}, expected {list(output_names)}")
    return path


def _export(module, args, path, input_names, output_names, dynamic_axes) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes=dynamic_axes or {},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
        custom_opsets={DOMAIN: 1} if getattr(module, "fused", False) else None,  # attention.py's nodes
    )


def to_fp16(src: Path, dst: Path, threshold: int = DEFAULT_THRESHOLD, keep_fp32: Sequence[str] = ()) -> Path:
    """Weights and activations in fp16 except the op types `keep_fp32`, which compute in fp32
    between casts; inputs and outputs stay fp32 so feeds do not change (fp16.py)."""
    from .fp16 import convert

    save_graph(convert(src, keep_fp32), dst, threshold)
    return dst


def make_variant(
    fp32_path: Path,
    precision: str,
    calibration: list[dict] | None = None,
    threshold: int = DEFAULT_THRESHOLD,
    keep_fp32: Sequence[str] = (),
) -> Path:
    """Write the `precision` variant beside the fp32 graph and return its path.

    keep_fp32: op types the fp16 variant leaves in fp32."""
    dst = fp32_path.with_name(fp32_path.name.replace(".fp32.", f".{precision}."))
    if precision == "fp16":
        return to_fp16(fp32_path, dst, threshold, keep_fp32)
    if precision == "int8":
        return to_int8(fp32_path, dst, calibration, threshold)
    raise ValueError(f"unknown precision {precision!r}; choose fp16 or int8")
