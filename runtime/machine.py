"""Which machine measured a figure: CPU model and ISA flags, GPUs, onnxruntime.

int8 and fp16 results are properties of a graph *and* the CPU that runs it:
onnxruntime's x86 U8S8 int8 kernels use VPMADDUBSW on AVX2/AVX-512 CPUs
without VNNI, whose 16-bit intermediate sums saturate (the default bundle's
QDQ U8S8 patch encoder measures cosine 0.96 against fp32 on a VNNI CPU and
0.38 with the same bytes on an AVX2-only one), and fp16 runs through casts on
CPUs without native fp16 arithmetic. So every parity figure is recorded with
`describe()` of the machine that measured it.

Standard library only (reads /proc), so the runtime can use it on the line's box.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BOARD = Path("/proc/device-tree/model")  # ARM boards (a Jetson) name themselves here
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
# The flags that decide which int8 / fp16 kernels onnxruntime picks.
X86_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "asimdhp", "fphp", "sve")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# numpy's names (CPUID as numpy reads it) for the flags above that it knows.
CPUID_NAMES = {
    "avx2": "AVX2",
    "fma": "FMA3",
    "f16c": "F16C",
    "avx512f": "AVX512F",
    "avx512bw": "AVX512BW",
    "avx512_vnni": "AVX512VNNI",
    "avx512_bf16": "AVX512BF16",
    "avx512_fp16": "AVX512FP16",
}


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(CPU model, flags) from the text of /proc/cpuinfo; x86 ("model name", "flags")
    and ARM ("Hardware"/"CPU part", "Features") spellings. Unknown parts come back empty."""
    model, flags = "", set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu() -> tuple[str, set[str]]:
    """This machine's (CPU model, flags). ARM's cpuinfo names no model: the board's
    device-tree name stands in, then platform.processor(). Flags the processor itself
    denies (`cpuid_denies`) are dropped."""
    model, flags = parse_cpuinfo(_read(CPUINFO))
    flags -= cpuid_denies(flags)
    return model or _read(BOARD).strip("\x00 \n") or platform.processor() or "unknown", flags


def cpuid_denies(flags: Iterable[str]) -> set[str]:
    """The x86 `flags` that the processor's own CPUID answer lacks.

    /proc/cpuinfo is the kernel's view of the host: under an emulator
    (`qemu-x86_64 -cpu Haswell`) it still lists the host's AVX-512 VNNI while
    onnxruntime, asking CPUID, gets AVX2 kernels. numpy asks CPUID at import
    (`__cpu_features__`), so its answer is the one that decides the kernels.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # another numpy layout: keep /proc's word
        return set()
    return {flag for flag, name in CPUID_NAMES.items() if flag in flags and features.get(name) is False}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, /proc not mounted, no device tree
        return ""


def isa(flags: Iterable[str], arch: str | None = None) -> dict[str, bool]:
    """The int8/fp16-relevant flags of `arch` (default: this machine), each True or False."""
    arch = (arch or platform.machine()).lower()
    names = ARM_FLAGS if arch.startswith(("arm", "aarch")) else X86_FLAGS
    have = set(flags)
    return {name: name in have for name in names}


def u8s8_may_saturate(flags: Iterable[str], arch: str | None = None) -> bool:
    """True on x86 CPUs without VNNI, where onnxruntime's U8S8 kernels can saturate
    (onnxruntime's quantization guide, "When and why do I need to try U8U8?")."""
    arch = (arch or platform.machine()).lower()
    have = set(flags)
    return arch in ("x86_64", "amd64", "i686", "x86") and not any(f in have for f in VNNI_FLAGS)


def gpus() -> list[str]:
    """NVIDIA GPU models the driver lists in /proc (no nvidia-smi, no CUDA import)."""
    names = []
    for info in sorted(NVIDIA_GPUS.glob("*/information")):
        try:
            lines = info.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        model = next((v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k.strip() == "Model"), "")
        names.append(model or "unknown NVIDIA GPU")
    return names


def onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "not installed"
    return onnxruntime.__version__


def describe(providers: Iterable[str] = ()) -> dict:
    """This machine as a JSON-ready dict, for the `measured_on` field of a parity record.

    `providers`: the execution providers the measuring session really got.
    """
    model, flags = cpu()
    arch = platform.machine()
    return {
        "cpu": model,
        "arch": arch,
        "cores": _cores(),
        "isa": isa(flags, arch),
        "u8s8_may_saturate": u8s8_may_saturate(flags, arch),
        "gpus": gpus(),
        "onnxruntime": onnxruntime_version(),
        "providers": list(providers),
    }


def fingerprint() -> str:
    """16 hex digits naming what decides a graph's numbers here: CPU model, architecture,
    the ISA flags of `isa`, GPUs and onnxruntime's version (not the core count)."""
    described = describe()
    payload = {k: described[k] for k in ("cpu", "arch", "isa", "gpus", "onnxruntime")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def summary(described: dict) -> str:
    """One line for a person: `describe()`'s dict (or a parity record's `measured_on`) as
    "AMD EPYC (x86_64, 2 cores; avx2 fma ... avx512_vnni; no NVIDIA GPU; onnxruntime 1.31.1)".
    Missing fields (a record from before they were kept) are said to be unknown."""
    isa = described.get("isa")
    flags = " ".join(k for k, v in isa.items() if v) or "none of " + " ".join(isa) if isa else "ISA flags not recorded"
    if described.get("u8s8_may_saturate"):
        flags += ", no VNNI: U8S8 int8 may saturate"
    gpus = described.get("gpus")
    gpu = ("GPU " + ", ".join(gpus)) if gpus else "no NVIDIA GPU" if gpus is not None else "GPUs not recorded"
    cores = f", {described['cores']} cores" if described.get("cores") else ""
    providers = f"; {', '.join(described['providers'])}" if described.get("providers") else ""
    return (
        f"{described.get('cpu') or 'unknown CPU'} ({described.get('arch', 'arch not recorded')}{cores}; {flags}; "
        f"{gpu}; onnxruntime {described.get('onnxruntime', 'version not recorded')}{providers})"
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
