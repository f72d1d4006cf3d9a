"""int8 variants in a format whose results do not depend on the CPU that runs them.

onnxruntime's x86 int8 kernels multiply uint8 activations by int8 weights
(U8S8) with VPMADDUBSW on CPUs without VNNI (AVX2, AVX-512 before VNNI): it
adds pairs of products into 16 bits and saturates, so the same graph computes
different numbers on different CPUs. onnxruntime's quantization guide names
the remedies ("When and why do I need to try U8U8?"): 7-bit weights
(`reduce_range`) or uint8 weights (U8U8); VNNI and ARM CPUs do not saturate.

Measured here: cosine against the fp32 graph, worst row over the parity
inputs, the same bytes run natively on an AMD EPYC with AVX-512 VNNI and
under `qemu-x86_64 -cpu Haswell` (AVX2, FMA, F16C; no AVX-512, no VNNI) so
that onnxruntime 1.31.1 picks its AVX2 kernels:

    graph (output)                 format                          VNNI     AVX2
    patch_encoder (patch_tokens)   static QDQ U8S8 per-channel     0.958    0.384   (the old format)
                                   static QDQ S8S8 per-channel     0.960    0.384
                                   static QOperator U8U8 per-ch.   0.960    0.386
                                   static QDQ U8U8 per-tensor      0.714    0.714
                                   static QDQ U8U8 per-channel     0.952    0.952   p50 70 ms vs fp32 5.2 ms
                                   static QDQ U8S8 per-ch. 7-bit   0.836    0.836   p50 6.4 ms (chosen)
    clip_image, tiny (worst tap)   dynamic U8S8                    0.9999   0.9906  (the old format)
                                   dynamic U8S8 7-bit              0.9996   0.9996
                                   dynamic U8U8                    0.9999   0.9999  (chosen)
    sam_encoder, tiny              dynamic U8S8                    0.976   -0.894   (the old format)
                                   dynamic U8S8 7-bit              0.936    0.936
                                   dynamic U8U8                    0.978    0.978   (chosen)
    sam_decoder, tiny (low_res)    dynamic U8S8                    0.9991   0.558   (the old format)
                                   dynamic U8S8 7-bit              0.9975   0.9975
                                   dynamic U8U8                    0.9987   0.9987  (chosen)

(tiny graphs: random weights, one build; patch encoder: the packaged ImageNet
weights, batch 1 at 320 px, 2 threads. Static QDQ of the random-weight SAM
graphs was worse still on both CPUs, and per-channel dynamic weights were no
better than per-tensor. U8U8 and U8S8 dynamic ran at the same speed here:
sam_decoder best of 30, 34.5 vs 31.2 ms, fp32 39.7 ms.)

Chosen: dynamic U8U8 for the transformers (full 8-bit weights, the same
figure on both CPUs) and static QDQ U8S8 per-channel with 7-bit weights for
the all-convolution patch encoder: per-channel U8U8 holds too and is more
accurate, but onnxruntime has no fast kernel for per-channel uint8 conv
weights and it ran 13x slower than fp32 (70 vs 5.2 ms), which defeats int8. The patch
encoder's int8 stays outside its 0.98 bound on every CPU (it was outside at
0.958 on VNNI before too); the manifest says so and the runtime can refuse it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx

from .graph_files import DEFAULT_THRESHOLD, check_graph, data_path, external_data, save_graph, tensor_bytes


@dataclass(frozen=True)
class Int8Format:
    """One quantisation recipe, recorded in each int8 graph's parity as `quantisation`."""

    method: str  # "dynamic" (activations quantised per call) or "static" (calibrated)
    graph_format: str  # "IntegerOps" (dynamic) or "QDQ"
    activations: str  # "uint8": onnxruntime's dynamic quantiser knows no other
    weights: str  # "uint8" (U8U8) or "int8" (U8S8)
    per_channel: bool
    reduce_range: bool  # 7-bit weights
    op_types: tuple[str, ...] = ()  # () = every op the quantiser supports

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"op_types": list(self.op_types)}


# Transformers: MatMul/Gemm weights (convolutions, a small share of their FLOPs, stay fp32).
DYNAMIC = Int8Format(
    "dynamic", "IntegerOps", "uint8", "uint8", per_channel=False, reduce_range=False, op_types=("MatMul", "Gemm")
)
# CNNs, whose work is all convolutions: everything, calibrated, per-channel weights.
STATIC = Int8Format("static", "QDQ", "uint8", "int8", per_channel=True, reduce_range=True)


def int8_format(calibrated: bool) -> Int8Format:
    return STATIC if calibrated else DYNAMIC


def to_int8(src: Path, dst: Path, calibration: list[dict] | None = None, threshold: int = DEFAULT_THRESHOLD) -> Path:
    """Quantise `src` into `dst`: DYNAMIC without calibration feeds, STATIC with them.

    A graph with external data (or over the threshold) is read and written by the
    quantiser in external-data form, then rewritten in the bundle's layout.
    """
    big = external_data(src) is not None or tensor_bytes(onnx.load(str(src), load_external_data=False)) > threshold
    if calibration:
        _static(src, dst, calibration, big)
    else:
        _dynamic(src, dst, big)
    save_graph(onnx.load(str(dst)), dst, threshold)  # one data file named after dst, or none
    check_graph(dst)
    return dst


def _types(fmt: Int8Format):
    from onnxruntime.quantization import QuantType

    kind = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    return kind[fmt.activations], kind[fmt.weights]


def _dynamic(src: Path, dst: Path, big: bool) -> None:
    from onnxruntime.quantization import quantize_dynamic

    _, weights = _types(DYNAMIC)
    # Tensors after onnxruntime's fused operators (optimize.py) have no type from onnx's shape
    # inference; in these graphs every such activation is float32.
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=weights,
        per_channel=DYNAMIC.per_channel,
        reduce_range=DYNAMIC.reduce_range,
        op_types_to_quantize=list(DYNAMIC.op_types),
        use_external_data_format=big,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _static(src: Path, dst: Path, calibration: list[dict], big: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    activations, weights = _types(STATIC)
    prepared = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(
            str(src),
            str(prepared),
            skip_optimization=True,
            skip_symbolic_shape=True,
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            external_data_location=data_path(prepared).name,
        )
        quantize_static(
            str(prepared),
            str(dst),
            Feeds(),
            quant_format=QuantFormat.QDQ,
            per_channel=STATIC.per_channel,
            reduce_range=STATIC.reduce_range,
            activation_type=activations,
            weight_type=weights,
            use_external_data_format=big,
        )
    finally:
        prepared.unlink(missing_ok=True)
        data_path(prepared).unlink(missing_ok=True)
