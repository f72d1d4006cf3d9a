"""python -m runtime.check DIR: prove a bundle loads and runs here, torch-free.

Verifies every hash, opens every graph at every precision (checking its inputs
and outputs against the manifest), then feeds each one real inputs made by the
runtime's own preprocessing and tokenizer, and prints what ran where and how long
it took. Exit status 1 with the reason when anything is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .manifest import BundleError
from .preprocess import clip_input, sam_input, sam_prompts
from .tokenizer import ClipTokenizer

log = logging.getLogger("lineside.check")

PROMPTS = ["a photo of a flawless part.", "a photo of a damaged part."]


def test_frame(height: int = 480, width: int = 640) -> np.ndarray:
    """HxWx3 uint8 RGB: a grey gradient with a dark scratch, as a camera might see a part."""
    frame = np.tile(np.linspace(60, 200, width, dtype=np.float32), (height, 1))
    frame[height // 2 - 2 : height // 2 + 2, width // 4 : width // 2] = 20
    return np.repeat(frame[..., None], 3, axis=2).astype(np.uint8)


def _feeds(bundle: Bundle, name: str, frame: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    component = bundle.component(name)
    if name in ("clip_image", "patch_encoder"):
        return {component.inputs[0].name: clip_input(frame, component.preprocessing)}
    if name == "clip_text":
        return {component.inputs[0].name: ClipTokenizer.from_component(bundle.path, component)(PROMPTS)}
    if name == "sam_encoder":
        return {component.inputs[0].name: sam_input(frame, component.preprocessing)}
    if name == "sam_decoder":
        h, w = frame.shape[:2]
        prompts = sam_prompts((h, w), component.preprocessing, np.array([[w / 3, h / 2]]), np.array([1]))
        return {component.inputs[0].name: cache["sam_encoder"][0], **prompts}
    raise BundleError(f"no smoke input for component {name!r}")


def check(path: Path, providers: tuple[str, ...] = ("cpu",)) -> tuple[Bundle, list[tuple[str, ...]]]:
    """Run every graph once; rows of (component, precision, providers, ms, output shapes)."""
    bundle = Bundle.open(path)
    frame, cache, rows = test_frame(), {}, []
    order = ["clip_image", "patch_encoder", "clip_text", "sam_encoder", "sam_decoder", "mllm"]
    for name in sorted(bundle.manifest.components, key=lambda n: order.index(n) if n in order else 99):
        if bundle.component(name).kind == "gguf":
            rows.append(_check_gguf(bundle, name))
            continue
        for precision in bundle.component(name).files:
            session = bundle.session(name, precision, providers)
            feeds = _feeds(bundle, name, frame, cache)
            started = time.perf_counter()
            outputs = list(session.run(feeds).values())
            ms = (time.perf_counter() - started) * 1e3
            if not all(np.isfinite(o).all() for o in outputs):
                raise BundleError(f"{name} ({precision}) produced NaN or inf on a plain test frame")
            cache.setdefault(name, outputs)
            shapes = " ".join("x".join(map(str, o.shape)) for o in outputs)
            rows.append((name, precision, ",".join(p.replace("ExecutionProvider", "") for p in session.providers),
                         f"{ms:.1f}", shapes))  # fmt: skip
    return bundle, rows


def _check_gguf(bundle: Bundle, name: str) -> tuple[str, ...]:
    """Load the language model and generate a few tokens (llama.cpp, CPU)."""
    component = bundle.component(name)
    quant, entry = next(iter(component.files.items()))
    try:
        import llama_cpp
    except ImportError:
        return (name, quant, "-", "-", "not run: llama-cpp-python not installed")
    started = time.perf_counter()
    llm = llama_cpp.Llama(str(bundle.file_path(entry)), n_ctx=256, seed=0, verbose=False)
    out = llm.create_completion("A scratch is", max_tokens=8, temperature=0.0)
    ms = (time.perf_counter() - started) * 1e3
    return (name, quant, "llama.cpp CPU", f"{ms:.1f}", f"{out['usage']['completion_tokens']} tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.check", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--providers", default="cpu", help="comma list, in order: tensorrt,cuda,cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        bundle, rows = check(args.bundle, tuple(args.providers.split(",")))
    except (BundleError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"bundle check failed: {e}", file=sys.stderr)
        return 1
    header = ("component", "precision", "provider", "ms", "output shapes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"bundle {bundle.bundle_id} ({bundle.manifest.profile}): every graph loaded and ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
