"""fp16 variants: onnxruntime's float16 converter, with chosen op types kept in fp32.

Weights and activations become fp16; inputs and outputs stay fp32 so feeds do
not change (`keep_io_types`); the op types in `keep_fp32` compute in fp32
between casts. The converter needs every tensor's type, which onnx's own
shape inference cannot give past onnxruntime's fused operators
(MultiHeadAttention, SkipLayerNormalization, BiasGelu), so types come from
onnxruntime's symbolic shape inference (`OnnxModel.convert_float_to_float16`).

Two faults of the converter are repaired afterwards: a tensor feeding two kept
nodes gets two identical Cast nodes (same name, same output), which onnxruntime
refuses; and its casts are appended after the nodes that use them, which onnx's
checker refuses, so the graph is sorted topologically.

Why not keep more in fp32 by default: onnxruntime's LayerNormalization,
SkipLayerNormalization and MultiHeadAttention fp16 kernels already keep their
statistics and softmax sums in fp32, and each fp32 island costs two casts per
use. What a graph keeps is chosen per component by measurement (see the
callers); the parity record of every fp16 variant names it (`graph.fp32_ops`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnx

log = logging.getLogger("lineside.export")

FP16_MIN, FP16_MAX = 5.96e-08, 65504.0  # clamp bounds for converted weights: fp16's own range


def convert(src: Path, keep_fp32: Sequence[str] = ()) -> onnx.ModelProto:
    """The fp16 variant of the fp32 graph at `src` (external data loaded), `keep_fp32` op types in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    logging.disable(logging.WARNING)  # the converter's advice about initializers shared by fp16 and fp32 nodes
    try:
        model.convert_float_to_float16(
            keep_io_types=True,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32],
            min_positive_val=FP16_MIN,
            max_finite_val=FP16_MAX,
        )
    finally:
        logging.disable(logging.NOTSET)
    _drop_duplicate_casts(model.model.graph)
    model.topological_sort()
    return model.model


def _drop_duplicate_casts(graph: onnx.GraphProto) -> None:
    """Keep the first of several Cast nodes writing the same tensor (they are identical)."""
    written: set[str] = set()
    keep = []
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in written:
            continue
        written.update(node.output)
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
