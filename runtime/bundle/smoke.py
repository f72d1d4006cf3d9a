"""Every graph of a bundle run once on a plain frame, with inputs the bundle's own preprocessing and
tokenizer make: what `python -m runtime.check` runs first, and the frame the precision verdicts
(verify.py) are measured on. Needs nothing above the bundle: a graph that cannot take its
manifest's inputs is the bundle's fault, found before any detector is built.
"""

from __future__ import annotations

import time

import numpy as np

from .loader import Bundle
from .manifest import ROLES, BundleError
from .preprocess import clip_input, sam_input, sam_prompts
from .tokenizer import ClipTokenizer

PROMPTS = ["a photo of a flawless part.", "a photo of a damaged part."]


def check_frame(height: int = 480, width: int = 640) -> np.ndarray:
    """HxWx3 uint8 RGB: a grey gradient with a dark scratch, as a camera might see a part."""
    frame = np.tile(np.linspace(60, 200, width, dtype=np.float32), (height, 1))
    frame[height // 2 - 2 : height // 2 + 2, width // 4 : width // 2] = 20
    return np.repeat(frame[..., None], 3, axis=2).astype(np.uint8)


def graph_feeds(bundle: Bundle, name: str, frame: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """The inputs of graph `name` on `frame`, made as the detector makes them; SAM's decoder takes the encoder's
    outputs from `cache` (by role), so the encoder runs first."""
    component = bundle.component(name)
    if component.role == "image_encoder":
        return {component.inputs[0].name: clip_input(frame, component.preprocessing)}
    if component.role == "text_encoder":
        return {component.inputs[0].name: ClipTokenizer.from_component(bundle.path, component)(PROMPTS)}
    if component.role == "sam_encoder":
        return {component.inputs[0].name: sam_input(frame, component.preprocessing)}
    if component.role == "sam_decoder" and "sam_encoder" in cache:
        h, w = frame.shape[:2]
        prompts = sam_prompts((h, w), component.preprocessing, np.array([[w / 3, h / 2]]), np.array([1]))
        return {component.inputs[0].name: cache["sam_encoder"][0], **prompts}
    raise BundleError(f"no smoke input for component {name!r} (role {component.role})")


def run_graphs(bundle: Bundle, providers: tuple[str, ...] = ("cpu",)) -> list[tuple[str, ...]]:
    """Every graph at every precision once on the check frame (SAM's decoder fed the encoder's output,
    the language model a few tokens); BundleError on NaN or inf. Rows of (component, precision,
    providers, ms, output shapes)."""
    frame, cache, rows = check_frame(), {}, []
    order = list(ROLES)  # by role: SAM's decoder is fed the encoder's output
    for name in sorted(bundle.manifest.components, key=lambda n: order.index(bundle.component(n).role)):
        if bundle.component(name).kind == "gguf":
            rows.append(check_gguf(bundle, name))
            continue
        for precision in bundle.component(name).files:
            session = bundle.session(name, precision, providers)
            feeds = graph_feeds(bundle, name, frame, cache)
            started = time.perf_counter()
            outputs = list(session.run(feeds).values())
            ms = (time.perf_counter() - started) * 1e3
            if not all(np.isfinite(o).all() for o in outputs):
                raise BundleError(f"{name} ({precision}) produced NaN or inf on a plain test frame")
            cache.setdefault(bundle.component(name).role, outputs)
            shapes = " ".join("x".join(map(str, o.shape)) for o in outputs)
            rows.append(
                (
                    name,
                    precision,
                    ",".join(p.replace("ExecutionProvider", "") for p in session.providers),
                    f"{ms:.1f}",
                    shapes,
                )
            )
    return rows


def check_gguf(bundle: Bundle, name: str) -> tuple[str, ...]:
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
