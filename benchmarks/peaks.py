"""What a latency row is held against: a peak measured on the device that ran it, and
torch.compile of the same module beside torch eager on a GPU.

"% of peak" divides a graph's achieved GFLOP/s by a matrix-multiply peak of the
same device and arithmetic, measured in the same run:

* CPU rows (fp32, fp16): numpy's fp32 GEMM (flops.matmul_peak_gflops), as before;
* GPU rows (the session's first provider is CUDA or TensorRT): the GPU's own fp16
  GEMM through torch on that device (`gemm_peak_gflops`), the ceiling a fused
  fp16 graph can approach; without a torch CUDA device the column is left empty
  rather than filled with a CPU figure;
* int8 rows: no column. Integer GEMM peaks are another unit, and onnxruntime's
  dynamic int8 also spends time quantising activations, so a ratio to a float
  peak (140-227% once) means nothing.
"""

from __future__ import annotations

import time

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def on_gpu(run_: dict) -> bool:
    """Whether a latency run's sessions ran on a GPU (its first provider)."""
    return bool(run_.get("providers")) and run_["providers"][0] in GPU_PROVIDERS


def gemm_peak_gflops(device: str = "cuda", size: int = 8192, repeats: int = 20) -> float | None:
    """Best of `repeats` fp16 GEMMs of size^3 on a torch `device`, in GFLOP/s; None without it."""
    try:
        import torch
    except ImportError:
        return None
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    a, b = (torch.randn(size, size, device=device, dtype=torch.float16) for _ in range(2))
    for _ in range(3):  # clocks up, cuBLAS picks its kernel
        a @ b
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best / 1e9


def percent_of_peak(run_: dict, data: dict) -> float | str:
    """The image encoder's GFLOP/s as % of its device's peak; "-" where no peak applies."""
    if run_["precision"] == "int8":
        return "-"
    peak = data.get("gpu_gemm_peak_gflops") if on_gpu(run_) else data.get("matmul_peak_gflops")
    return 100 * run_["image_encoder_gflops"] / peak if peak else "-"


def peak_line(data: dict) -> str:
    """The report's sentence naming each peak used."""
    text = f"Measured matmul peak (numpy fp32 GEMM 1024³, for CPU rows): {data['matmul_peak_gflops']:.1f} GFLOP/s."
    if data.get("gpu_gemm_peak_gflops"):
        text += f" GPU fp16 GEMM peak (torch 8192³, for GPU rows): {data['gpu_gemm_peak_gflops']:.0f} GFLOP/s."
    return text + " int8 rows have no % of peak."


def compiled_ms(timed, module, x, repeats: int, device: str) -> dict | None:
    """p50/p90/p99 of torch.compile(module) (default mode) timed like eager by `timed`, on a GPU
    only (None on the CPU); {"error": ...} where compilation fails (no triton, no inductor)."""
    if not device.startswith("cuda"):
        return None
    import torch

    from .latency import percentiles

    try:  # the first call compiles: `timed` runs it once before timing
        return percentiles(timed(torch.compile(module), x, repeats))
    except Exception as e:  # inductor and triton fail in many types
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
