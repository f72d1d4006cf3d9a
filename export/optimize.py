"""Graph optimisation at export: static shapes folded, transformer operators fused.

The transformer encoders (CLIP's image tower, SAM's ViT) are traced with their
attention already one `com.microsoft::MultiHeadAttention` node per block
(attention.py). This step then, on the fp32 graph the bundle ships:

1. folds every shape computation away: onnxruntime's basic graph optimisations
   (constant folding, Shape of a static tensor -> constant, dead nodes), run
   offline and saved; portable across execution providers by onnxruntime's
   own rule for basic-level graphs. The rewrites that would turn MatMul + Add
   into Gemm (hiding the bias from the fusions below) are switched off. A
   static graph keeps no Shape nodes, so onnxruntime places nothing of it on
   the CPU and the CUDA provider can capture it in a CUDA graph;
2. runs onnxruntime's transformer fusions (`optimize_by_fusion`, model type
   "vit"): residual Add + LayerNormalization -> SkipLayerNormalization, bias +
   GELU -> BiasGelu, Erf-GELU -> Gelu.

The graph's inputs and outputs (names, dtypes, shapes) are checked unchanged,
and the operator counts before and after are returned for the manifest
(`parity.graph` of each variant). Parity is then measured on the optimised
graph against torch like any other.
"""

from __future__ import annotations

import collections
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from .attention import DOMAIN, FUSED_OP
from .graph_files import DEFAULT_THRESHOLD, check_graph, external_data, save_graph

log = logging.getLogger("lineside.export")

# Basic-level rewrites that would hide the patterns the fusions look for.
KEEP_FOR_FUSION = ["MatMulAddFusion", "MatMulScaleFusion", "ConstantSharing"]
# What the counts in the manifest track.
COUNTED = (
    "MultiHeadAttention",
    "Attention",
    "Softmax",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "Gelu",
    "FastGelu",
    "Shape",
    "MatMul",
    "Gemm",
    "Cast",
)


@dataclass(frozen=True)
class Optimisation:
    """How a transformer graph is optimised: onnxruntime's fusion model type, heads and width, and
    the op types its fp16 variant keeps in fp32 (fp16.py)."""

    num_heads: int
    hidden_size: int
    model_type: str = "vit"
    fp16_keep_fp32: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
            "attention": f"{DOMAIN}.{FUSED_OP} (written at export)",
        }


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per tracked operator type, and the total (`nodes`)."""
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return {"nodes": sum(counts.values()), **{op: counts[op] for op in COUNTED if counts[op]}}


def _signature(model: onnx.ModelProto) -> list:
    def spec(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]

    return [[spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]]


def _same_io(before: list, after: list) -> bool:
    """Same names, dtypes and ranks; a dimension static before stays the same (a symbolic one may become static)."""
    pairs = [(b, a) for side_b, side_a in zip(before, after) for b, a in zip(side_b, side_a)]
    if [len(side) for side in before] != [len(side) for side in after]:
        return False
    return all(
        b[:2] == a[:2] and len(b[2]) == len(a[2]) and all(isinstance(d, str) or d == e for d, e in zip(b[2], a[2]))
        for b, a in pairs
    )


def fold_shapes(src: Path, dst: Path) -> None:
    """onnxruntime's basic-level optimisations of `src`, saved to `dst` (external data kept external)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    if external_data(src) is not None:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"], disabled_optimizers=KEEP_FOR_FUSION)


def fuse(model: onnx.ModelProto, how: Optimisation) -> onnx.ModelProto:
    """onnxruntime's transformer fusions on `model` (in memory)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    options = FusionOptions(how.model_type)
    options.enable_attention = False  # attention is fused at export already (attention.py)
    options.enable_embed_layer_norm = False
    logging.disable(logging.WARNING)  # its per-fusion chatter ("symbolic shape inference failed", ...)
    try:
        return optimize_by_fusion(model, how.model_type, how.num_heads, how.hidden_size, options).model
    finally:
        logging.disable(logging.NOTSET)


def optimise_graph(path: Path, how: Optimisation, threshold: int = DEFAULT_THRESHOLD) -> dict:
    """Fold and fuse the graph at `path` in place; its operator counts before and after."""
    before = onnx.load(str(path), load_external_data=False)
    signature, counts = _signature(before), op_counts(before)
    del before
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        folded = Path(scratch) / path.name
        fold_shapes(path, folded)
        model = fuse(onnx.load(str(folded)), how)
    if not _same_io(signature, _signature(model)):
        raise RuntimeError(f"optimising {path.name} changed its inputs or outputs: {signature} -> {_signature(model)}")
    after = op_counts(model)
    save_graph(model, path, threshold)
    del model
    check_graph(path)
    log.info("%s optimised: %s -> %s", path.name, counts, after)
    return {"optimisation": how.to_dict(), "ops_before": counts, "ops": after}
