"""A small onnxruntime session wrapper: explicit providers, numpy in, numpy out.

Provider order is TensorRT -> CUDA -> CPU, and only what the session really got
counts: `get_available_providers()` lists CUDA on a machine without a GPU when the
GPU build is installed, so we ask the session afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("lineside.session")

# onnxruntime's intra-op threads spin for a while after each run by default, waiting for the next; between
# runs serve decodes files and scores maps in numpy on the same cores, and a spinning pool takes their CPU
# (on the 2-core VM, detect-only and serve spent some 40% more CPU per frame with spinning on, measured by
# benchmarks/serve_vs_detect.py). Off, the threads sleep and wake for the next run (microseconds each).
INTRA_OP_SPINNING = "0"

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


_PRELOADED: list[bool] = []  # preload_dlls runs once per process


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError(
            "onnxruntime is not installed: pip install 'lineside[cpu]' (or 'lineside[gpu]' on a GPU box)"
        ) from e
    return onnxruntime


def _preload_gpu_libraries(ort, providers: Sequence[str]) -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN from the nvidia-* wheels pip installed.

    Without it the CUDA provider silently fails to load unless the system's own
    CUDA libraries happen to be on the loader path.
    """
    if _PRELOADED or not {"cuda", "tensorrt"} & set(providers) or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED.append(True)
    try:
        ort.preload_dlls()
    except Exception as e:  # a missing wheel is reported below, per graph, with the provider it costs
        log.debug("onnxruntime.preload_dlls() failed: %s", e)


class ProviderError(RuntimeError):
    """A requested accelerator was not obtained and the settings say not to run without it."""


def missing_providers(ort, requested: Sequence[str], obtained: Sequence[str]) -> list[tuple[str, str]]:
    """(short name, reason) for every requested accelerated provider the session did not get."""
    available = set(ort.get_available_providers())
    out = []
    for short in requested:
        name = PROVIDER_NAMES[short]
        if short == "cpu" or name in obtained:
            continue
        if name not in available:
            reason = f"this onnxruntime build ({ort.__version__}) has no {name}: install onnxruntime-gpu"
        else:
            reason = (
                "onnxruntime could not create it (no GPU visible, or CUDA/cuDNN/TensorRT libraries "
                "missing or of the wrong version; onnxruntime's own log above says which)"
            )
        out.append((short, reason))
    return out


def _trt_shapes(profile: dict, which: str) -> str:
    """{"pixels": {"min": [1, 3, 224, 224], ...}} -> "pixels:1x3x224x224" for TensorRT."""
    return ",".join(f"{name}:{'x'.join(map(str, dims[which]))}" for name, dims in profile.items())


def provider_list(
    providers: Sequence[str],
    trt_cache_dir: Path | None = None,
    trt_fp16: bool = False,
    trt_profile: dict | None = None,
    cuda_graph: bool = False,
) -> list:
    """Short names ("tensorrt", "cuda", "cpu") -> onnxruntime provider entries, in order.

    cuda_graph: capture the graph in a CUDA graph on its first run and replay it (static
    shapes and IO-bound buffers at fixed addresses only: runtime/bundle/binding.py)."""
    out = []
    for short in providers:
        if short not in PROVIDER_NAMES:
            raise ValueError(f"unknown provider {short!r}; choose from {', '.join(PROVIDER_NAMES)}")
        name = PROVIDER_NAMES[short]
        if short == "tensorrt":
            opts = {"trt_fp16_enable": trt_fp16}
            if trt_profile:  # the manifest's min/opt/max shapes for dynamic inputs
                opts |= {f"trt_profile_{w}_shapes": _trt_shapes(trt_profile, w) for w in ("min", "opt", "max")}
            if trt_cache_dir is not None:
                # The engine is keyed by the onnx file's hash inside this folder, so a
                # new bundle or GPU builds a new engine instead of loading a stale one.
                opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir)}
            if cuda_graph:
                opts["trt_cuda_graph_enable"] = True
            out.append((name, opts))
        elif short == "cuda" and cuda_graph:
            out.append((name, {"enable_cuda_graph": "1"}))
        else:
            out.append(name)
    return out


def _static(session) -> bool:
    """Whether every input and output of an onnxruntime session has a fixed shape."""
    return all(isinstance(d, int) for t in (*session.get_inputs(), *session.get_outputs()) for d in t.shape)


def session_options(ort, threads: int | None = None):
    """The onnxruntime SessionOptions every graph is opened with. The memory ones (CPU arena, memory
    pattern) are onnxruntime's defaults, left on: benchmarks/memory.py reports them with peak RSS."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; our own logger says what ran where
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", INTRA_OP_SPINNING)
    return options


def memory_options(threads: int | None = None) -> dict:
    """The session options that decide how much memory a graph holds beyond its weights, as set here."""
    options = session_options(_import_ort(), threads)
    return {
        "enable_cpu_mem_arena": options.enable_cpu_mem_arena,
        "enable_mem_pattern": options.enable_mem_pattern,
        "enable_mem_reuse": options.enable_mem_reuse,
        "graph_optimization_level": str(options.graph_optimization_level),
        "loaded_from": "path (onnxruntime reads the file itself; Python holds no copy of its bytes)",
    }


class OnnxSession:
    """One graph, loaded once. `run` takes and returns dicts of numpy arrays by name."""

    def __init__(
        self,
        path: Path,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
        trt_cache_dir: Path | None = None,
        trt_fp16: bool = False,
        trt_profile: dict | None = None,
        strict_providers: bool = False,
        cuda_graph: bool = False,
    ):
        self.path = Path(path)
        self._options = (threads, trt_cache_dir, trt_fp16, trt_profile)
        self.cuda_graph = cuda_graph and bool({"cuda", "tensorrt"} & set(providers))
        self.strict = strict_providers
        self._open(tuple(providers))
        self._report_missing(tuple(providers))

    def _open(self, providers: tuple[str, ...]) -> None:
        ort = _import_ort()
        threads, trt_cache_dir, trt_fp16, trt_profile = self._options
        options = session_options(ort, threads)
        self.requested = providers
        _preload_gpu_libraries(ort, providers)
        entries = provider_list(providers, trt_cache_dir, trt_fp16, trt_profile, self.cuda_graph)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=entries)
        except Exception as e:  # e.g. nodes the CUDA provider leaves to the CPU, which capture refuses
            if not self.cuda_graph:
                raise
            log.warning("%s: CUDA-graph capture refused (%s); running without it", self.path.name, e)
            self.cuda_graph = False
            return self._open(providers)
        if self.cuda_graph and not _static(self.session):  # a replayed graph cannot change shape
            self.cuda_graph = False
            return self._open(providers)
        self.providers = tuple(self.session.get_providers())
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        log.info("%s runs on %s", self.path.name, ", ".join(self.providers))

    def _report_missing(self, requested: tuple[str, ...]) -> None:
        """One clear warning per graph and missing provider; an error with strict_providers."""
        missing = missing_providers(_import_ort(), requested, self.providers)
        for short, reason in missing:
            message = f"{self.path.name}: {short} requested but not obtained, running on {self.providers[0]}: {reason}"
            if self.strict:
                raise ProviderError(message + " (strict_providers is on: refusing to run without it)")
            log.warning(message)

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once; if an accelerated provider fails at run time, fall back to the next one."""
        names = list(outputs or self.output_names)
        try:
            values = self.session.run(names, feeds)
        except Exception as e:  # onnxruntime's pybind errors share no useful base class
            fallback = self.requested[1:]
            if not fallback or self.providers == (PROVIDER_NAMES["cpu"],):
                raise RuntimeError(f"{self.path.name} failed on {', '.join(self.providers)}: {e}") from e
            log.warning("%s failed on %s (%s); retrying on %s", self.path.name, self.providers[0], e, fallback)
            self._open(fallback)
            return self.run(feeds, outputs)
        return dict(zip(names, values))

    def run_with_iobinding(self, binding) -> None:
        """Run once on an IO binding of this session (binding.py, which falls back through `run`)."""
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:  # onnxruntime's pybind errors share no useful base class
            raise RuntimeError(f"{self.path.name} failed on {', '.join(self.providers)}: {e}") from e
