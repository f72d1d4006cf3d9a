"""FLOPs of an ONNX graph (MatMul, Gemm, Conv: the work that matters), and the
machine's measured matmul peak to hold achieved GFLOP/s against."""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import shape_inference


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    out = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def graph_flops(path, batch: int = 1) -> float:
    """Multiply-adds x 2 of MatMul, Gemm and Conv nodes, dynamic dims taken as `batch`/1."""
    model = onnx.load(str(path))
    shapes = _shapes(model)
    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and all(i in shapes for i in node.input[:2]):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            if len(a) >= 2 and len(b) >= 2:
                k = a[-1]
                n = b[-1] if node.op_type == "MatMul" else (b[0] if any(
                    at.name == "transB" and at.i for at in node.attribute) else b[-1])  # fmt: skip
                total += 2.0 * float(np.prod(a[:-1])) * k * n
        elif node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in shapes:
            out, w = shapes[node.output[0]], shapes[node.input[1]]
            total += 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
    return total * batch


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    """Best of `repeats` float32 GEMMs of size^3 through numpy's BLAS, in GFLOP/s."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best / 1e9
