"""A bundle as a Triton Inference Server model repository: one model per graph and precision.

    lineside export triton --bundle bundles/default --repo /srv/triton/lineside

    REPO/manifest.json                    the bundle's manifest, as the models were written from it
    REPO/patch_encoder_fp32/config.pbtxt  names, dtypes and dims from the manifest, batching, identity
    REPO/patch_encoder_fp32/1/patch_encoder.fp32.onnx   (and its .data file when the graph has one)

Every config is written from the manifest alone, never from the graph: the manifest is the
contract a client checks against (runtime/bundle/triton_session.py reads the same names back
from the server's metadata, and the bundle id and graph hashes from each model's parameters).
A model batches (max_batch_size, dynamic_batching) when every one of its inputs and outputs has
a named first dimension; the others (CLIP's image graph at batch 1, SAM's prompt decoder) run
one request at a time. Torch-free, so that the GPU server's box can write its own repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .fields import BundleError
from .loader import Bundle
from .manifest import MANIFEST_NAME, Component, TensorSpec

log = logging.getLogger("lineside.triton")

# manifest dtype -> (config.pbtxt data_type, the datatype the KServe v2 protocol names in metadata)
DATA_TYPES = {
    "float32": ("TYPE_FP32", "FP32"),
    "float16": ("TYPE_FP16", "FP16"),
    "int64": ("TYPE_INT64", "INT64"),
    "int32": ("TYPE_INT32", "INT32"),
    "uint8": ("TYPE_UINT8", "UINT8"),
    "bool": ("TYPE_BOOL", "BOOL"),
}
VERSION = "1"  # one version folder: a new bundle is a new repository, not a second version beside the old
PARAMETERS = ("bundle_id", "component", "role", "precision", "sha256", "within_bound")  # lineside_* in a config
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class RepoOptions:
    """How the repository serves: batching across requests, TensorRT inside onnxruntime."""

    max_batch_size: int = 8  # 0: no batching, every request alone
    queue_delay_us: int = 2000  # how long the dynamic batcher waits to fill a batch
    tensorrt: bool = False  # the onnxruntime backend's TensorRT accelerator, with the manifest's profiles
    tensorrt_fp16: bool = False

    def __post_init__(self):
        if not 0 <= self.max_batch_size <= 1024:
            raise ValueError(f"max batch size {self.max_batch_size} must be in 0..1024 (0: no batching)")
        if not 0 <= self.queue_delay_us <= 10_000_000:
            raise ValueError(f"queue delay {self.queue_delay_us} us must be in 0..10000000")


def model_name(component: str, precision: str) -> str:
    """The Triton model that serves `component` at `precision`: both the writer and the client name it so."""
    name = f"{component}_{precision}"
    if not _MODEL_NAME.fullmatch(name):
        raise BundleError(f"component name {component!r} cannot name a Triton model folder (letters, digits, _ . -)")
    return name


def batches(component: Component) -> bool:
    """Whether every input and output of the graph has a named (dynamic) first dimension."""
    tensors = (*component.inputs, *component.outputs)
    return bool(tensors) and all(t.shape and isinstance(t.shape[0], str) for t in tensors)


def served(bundle: Bundle, precisions: Sequence[str] | None = None) -> list[tuple[Component, str]]:
    """(component, precision) of every ONNX graph the repository serves (the language model stays local)."""
    out = []
    for component in bundle.manifest.components.values():
        if component.kind != "onnx":
            continue
        out += [(component, p) for p in component.files if precisions is None or p in precisions]
    return out


def write_repository(
    bundle: Bundle, repo: Path, options: RepoOptions = RepoOptions(), precisions: Sequence[str] | None = None
) -> list[str]:
    """Write the repository into `repo` (absent or empty); returns the model names written."""
    repo = Path(repo)
    if repo.exists() and (not repo.is_dir() or any(repo.iterdir())):
        raise FileExistsError(f"{repo} exists and is not an empty folder; give a new or empty --repo")
    models = served(bundle, precisions)
    if not models:
        raise BundleError(f"{bundle.path} has no ONNX graph at precisions {', '.join(precisions or ['any'])}")
    written = []
    for component, precision in models:
        name = model_name(component.name, precision)
        version = repo / name / VERSION
        version.mkdir(parents=True)
        graph = component.files[precision]
        for entry in (graph, component.assets.get(f"{precision}.data")):
            if entry is not None:  # a graph's external data keeps the name the graph refers to it by
                shutil.copyfile(bundle.file_path(entry, component.name), version / Path(entry.path).name)
        text = model_config(bundle, component, precision, options)
        (repo / name / "config.pbtxt").write_text(text, encoding="utf-8")
        written.append(name)
    shutil.copyfile(bundle.path / MANIFEST_NAME, repo / MANIFEST_NAME)
    return written


def model_config(bundle: Bundle, component: Component, precision: str, options: RepoOptions) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) of one graph at one precision."""
    batch = options.max_batch_size if batches(component) else 0
    graph = component.files[precision]
    lines = [
        f"name: {_quote(model_name(component.name, precision))}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {batch}",
        f"default_model_filename: {_quote(Path(graph.path).name)}",
        *_tensors("input", component.inputs, batch > 0),
        *_tensors("output", component.outputs, batch > 0),
    ]
    if batch:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {options.queue_delay_us}", "}"]
    if options.tensorrt:
        lines += _tensorrt(component, options, batch)
    identity = {
        "bundle_id": bundle.bundle_id,
        "component": component.name,
        "role": component.role,
        "precision": precision,
        "sha256": graph.sha256,
        "within_bound": json.dumps(graph.parity.get("within_bound")),
    }
    for key in PARAMETERS:
        lines.append(
            f"parameters {{ key: {_quote('lineside_' + key)} value {{ string_value: {_quote(identity[key])} }} }}"
        )
    return "\n".join(lines) + "\n"


def _tensors(kind: str, specs: Sequence[TensorSpec], batched: bool) -> list[str]:
    """input [ {...}, ... ] with dims past the batch dimension when batched; named dimensions are -1."""
    blocks = []
    for spec in specs:
        shape = spec.shape[1:] if batched else spec.shape
        dims = [-1 if isinstance(d, str) else d for d in shape]
        block = [f"    name: {_quote(spec.name)}", f"    data_type: {DATA_TYPES[spec.dtype][0]}"]
        if dims:
            block.append(f"    dims: [ {', '.join(map(str, dims))} ]")
        else:  # a tensor that is only its batch dimension: Triton wants one dim, reshaped away
            block += ["    dims: [ 1 ]", "    reshape { shape: [ ] }"]
        blocks.append("  {\n" + "\n".join(block) + "\n  }")
    return [f"{kind} [", ",\n".join(blocks), "]"] if blocks else []


def _tensorrt(component: Component, options: RepoOptions, batch: int) -> list[str]:
    """The onnxruntime backend's TensorRT accelerator, shaped by the manifest's min/opt/max profile
    (its batch dimension widened to the batcher's largest batch)."""
    params = {"precision_mode": "FP16" if options.tensorrt_fp16 else "FP32", "trt_engine_cache_enable": "1"}
    profile = component.tensorrt_profile
    for which in ("min", "opt", "max"):
        shapes = []
        for name, dims in profile.items():
            shape = list(dims[which])
            if batch and which == "max" and shape:
                shape[0] = max(shape[0], batch)
            shapes.append(f"{name}:{'x'.join(map(str, shape))}")
        if shapes:
            params[f"trt_profile_{which}_shapes"] = ",".join(shapes)
    entries = "\n".join(f"        parameters {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in params.items())
    return [
        "optimization { execution_accelerators {",
        "  gpu_execution_accelerator : [ {",
        '        name : "tensorrt"',
        entries,
        "  } ]",
        "} }",
    ]


def _quote(text: str) -> str:
    """A protobuf text-format string literal (non-ASCII as octal escapes of its UTF-8 bytes)."""
    out = []
    for char in str(text):
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append("".join(f"\\{b:03o}" for b in char.encode("utf-8")))
    return '"' + "".join(out) + '"'


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lineside export triton", description="Write a Triton Inference Server model repository from a bundle."
    )
    ap.add_argument("--bundle", type=Path, required=True, help="bundle folder (python -m export ... --out DIR)")
    ap.add_argument("--repo", type=Path, required=True, help="repository folder to write (new or empty)")
    ap.add_argument("--precisions", help="comma list of the precisions to serve (default: every one the bundle has)")
    ap.add_argument("--max-batch-size", type=int, default=RepoOptions.max_batch_size, help="0: no batching")
    ap.add_argument("--queue-delay-us", type=int, default=RepoOptions.queue_delay_us, help="the dynamic batcher's wait")
    ap.add_argument("--tensorrt", action="store_true", help="TensorRT accelerator in onnxruntime (a GPU server)")
    ap.add_argument("--tensorrt-fp16", action="store_true", help="with --tensorrt: build fp16 engines")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    precisions = [p for p in args.precisions.split(",") if p] if args.precisions else None
    try:
        options = RepoOptions(args.max_batch_size, args.queue_delay_us, args.tensorrt, args.tensorrt_fp16)
        bundle = Bundle.open(args.bundle)
        names = write_repository(bundle, args.repo, options, precisions)
    except (BundleError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
        print(f"lineside export triton: {e}", file=sys.stderr)
        return 2
    print(f"{args.repo}: {len(names)} models of bundle {bundle.bundle_id}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
