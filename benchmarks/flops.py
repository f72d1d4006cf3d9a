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


def _run_shapes(model: onnx.ModelProto, names: list[str], batch: int) -> dict[str, list[int]]:
    """Shapes of `names` from one onnxruntime run on zeros (when static inference gives up)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        feeds[i.name] = np.zeros(shape, np.int64 if "int64" in i.type else np.float32)
    return {n: list(v.shape) for n, v in zip(names, session.run(names, feeds))}


def graph_flops(path, batch: int = 1) -> float:
    """Multiply-adds x 2 of MatMul, Gemm and Conv nodes, dynamic dims taken as `batch`."""
    model = onnx.load(str(path))
    shapes = _shapes(model)
    wanted = [n.output[0] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    wanted += [n.input[0] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    shapes |= _run_shapes(
        model, [w for w in dict.fromkeys(wanted) if w not in {i.name for i in model.graph.initializer}], batch
    )
    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and all(i in shapes for i in node.input[:2]):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            total += 2.0 * float(np.prod(out)) * a[-1]  # every output element is a length-K dot product
        elif node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in shapes:
            out, w = shapes[node.output[0]], shapes[node.input[1]]
            total += 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
    return total


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
