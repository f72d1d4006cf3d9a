"""Torch -> ONNX, and the fp16 / int8 variants of an exported graph.

The legacy TorchScript exporter (`dynamo=False`) is used throughout: torch's
dynamo exporter fails on SAM's decoder with a dynamic number of points, writes
weights to a separate .onnx.data file and can rename outputs, while this one
keeps one self-contained file with exactly the names we give it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch

log = logging.getLogger("lineside.export")

OPSET = 17  # LayerNormalization as one op; supported by TensorRT 8.6+ and ORT 1.14+


def export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Trace `module` on `args` and write one self-contained ONNX file."""
    module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused fast path has no ONNX symbolic; trace the plain ops.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
            _export(module, args, path, input_names, output_names, dynamic_axes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    found = [o.name for o in model.graph.output]
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
    )


def to_fp16(src: Path, dst: Path) -> Path:
    """Weights and activations in fp16; inputs and outputs stay fp32 so feeds do not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    onnx.save(model, str(dst))
    return dst


def to_int8(src: Path, dst: Path, calibration: list[dict] | None = None) -> Path:
    """int8 weights. Without calibration data: dynamic quantisation of MatMul/Gemm
    (transformers: activations quantised per call; convolutions, a small share of
    their FLOPs, stay fp32). With calibration feeds: static QDQ quantisation of
    everything, per-channel weights (CNNs, whose work is all convolutions).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        return dst

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    prepared = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    return dst


def make_variant(fp32_path: Path, precision: str, calibration: list[dict] | None = None) -> Path:
    """Write the `precision` variant beside the fp32 graph and return its path."""
    dst = fp32_path.with_name(fp32_path.name.replace(".fp32.", f".{precision}."))
    if precision == "fp16":
        return to_fp16(fp32_path, dst)
    if precision == "int8":
        return to_int8(fp32_path, dst, calibration)
    raise ValueError(f"unknown precision {precision!r}; choose fp16 or int8")
