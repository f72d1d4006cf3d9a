"""How a graph is written to disk: one .onnx file, or .onnx + one external data file.

protobuf refuses to serialise a message over 2 GiB, so a graph whose tensors
exceed the threshold (SAM vit_h's encoder: 2.5 GB at fp32) keeps its structure
in `NAME.onnx` and every tensor of 1 KiB or more in `NAME.onnx.data` beside it,
in the same folder. onnxruntime finds the data file by the relative location
stored in the graph; the manifest records it as the component's asset
`<precision>.data`, so the runtime checks its size and sha256 at load like
every other file (a graph's .onnx hash says nothing about its weights once
they live outside it).

The threshold is a setting: `--external-data-threshold BYTES` on
`python -m export`, or LINESIDE_EXTERNAL_DATA_THRESHOLD_BYTES; tests set it
tiny to drive small graphs through the same path.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

DEFAULT_THRESHOLD = 1_800_000_000  # bytes of tensors; below protobuf's 2 GiB with room for the graph itself
THRESHOLD_ENV = "LINESIDE_EXTERNAL_DATA_THRESHOLD_BYTES"
INLINE_BELOW = 1024  # tensors smaller than this stay inside the .onnx even with external data


def parse_threshold(text: str | float, where: str = "external data threshold") -> int:
    """Bytes from "1800000000", "1.8e9" or a number; refuse negatives and words, naming them."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number of bytes (e.g. 1.8e9), not {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{where} must be >= 0 bytes, not {text!r}")
    return int(value)


def threshold_from_env(default: int = DEFAULT_THRESHOLD) -> int:
    """The threshold from LINESIDE_EXTERNAL_DATA_THRESHOLD_BYTES, else `default`."""
    text = os.environ.get(THRESHOLD_ENV)
    return default if text in (None, "") else parse_threshold(text, THRESHOLD_ENV)


def data_path(graph: Path) -> Path:
    """Where `graph`'s external data lives: `sam_encoder.fp32.onnx` -> `sam_encoder.fp32.onnx.data`."""
    return graph.with_name(graph.name + ".data")


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers and constant tensors (what would go external)."""
    total = sum(_nbytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        total += sum(_nbytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def _nbytes(tensor: onnx.TensorProto) -> int:
    return len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()


def save_graph(model: onnx.ModelProto, path: Path, threshold: int) -> Path | None:
    """Write `model` (its tensors loaded in memory) to `path`; return its data file or None.

    Any data file already beside `path` is removed first: onnx appends to it.
    `model` is spent afterwards: onnx moves its tensors out while saving (a copy
    would double a 2.5 GB graph in memory).
    """
    data = data_path(path)
    data.unlink(missing_ok=True)
    if tensor_bytes(model) <= threshold:
        onnx.save_model(model, str(path))
        return None
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=INLINE_BELOW,
    )
    os.chmod(data, path.stat().st_mode & 0o777)  # onnx creates it private; it ships like its .onnx
    return data


def check_graph(path: Path) -> None:
    """onnx's checker, given the path: an in-memory proto over 2 GiB cannot be checked."""
    onnx.checker.check_model(str(path))


def external_data(path: Path) -> Path | None:
    """The data file `path` refers to, or None; anything but `data_path(path)` is an error,
    because the manifest records exactly that one file."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in _tensors(model)
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not locations:
        return None
    if locations != {data_path(path).name}:
        raise RuntimeError(f"{path.name} keeps tensors in {sorted(locations)}; expected only {data_path(path).name}")
    return data_path(path)


def graph_outputs(path: Path) -> list[str]:
    """Output names, read without loading external tensors."""
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def _tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        yield from (a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
