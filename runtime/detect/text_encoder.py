"""Text embeddings through the bundle's text graph, computed once and kept on disk.

Prompts change rarely and the text graph is a third of CLIP, so every embedding
is cached by bundle id and prompt text; a new bundle never reads an old entry
(the id covers the graphs' hashes, tensors, preprocessing and config).

The graph is opened in the constructor even when every prompt is cached: a
swapped or broken text graph must stop the process at start, not on the first
new category hours later on the line.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from ..bundle.loader import Bundle
from ..bundle.manifest import REBUILD_HINT, BundleError
from .encoders import graph_entry
from .tokenizer import ClipTokenizer

log = logging.getLogger("lineside.text")

BATCH = 32


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lineside" / "text"


class TextEncoder:
    """prompts -> (P, D) float32 L2-normalised embeddings, cached per prompt."""

    def __init__(self, bundle: Bundle, providers=("cpu",), cache_dir: Path | None = None, **session_options):
        component = bundle.by_role("text_encoder")
        if component is None:
            raise BundleError(f"{bundle.path} has no text encoder (role text_encoder); {REBUILD_HINT}")
        self.component = component
        self.tokenizer = ClipTokenizer.from_component(bundle.path, component)
        self._session = bundle.session(component.name, "fp32", providers, **session_options)
        self.cache = Path(cache_dir or default_cache_dir()) / bundle.bundle_id
        self._memory: dict[str, np.ndarray] = {}
        self.encoded = 0  # prompts run through the graph (not found in the cache) since start

    def graphs(self) -> dict[str, dict]:
        """{graph: {precision, providers, requested}}: the text graph, always fp32 (each prompt runs once)."""
        return {self.component.name: graph_entry("fp32", self._session)}

    def _file(self, prompt: str) -> Path:
        return self.cache / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32] + ".npy")

    def _load(self, prompt: str) -> np.ndarray | None:
        if prompt in self._memory:
            return self._memory[prompt]
        path = self._file(prompt)
        try:
            vector = np.load(path)
        except (OSError, ValueError):
            return None  # absent or damaged: recompute
        self._memory[prompt] = vector
        return vector

    def _store(self, prompt: str, vector: np.ndarray) -> None:
        self._memory[prompt] = vector
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            tmp = self._file(prompt).with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, vector)
            tmp.replace(self._file(prompt))
        except OSError as e:  # a read-only disk costs speed, not correctness
            log.warning("text cache %s not writable (%s); embeddings stay in memory", self.cache, e)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        missing = [p for p in dict.fromkeys(prompts) if self._load(p) is None]
        for start in range(0, len(missing), BATCH):
            chunk = missing[start : start + BATCH]
            for prompt, vector in zip(chunk, self._encode(chunk)):
                self._store(prompt, vector)
        return np.stack([self._memory[p] for p in prompts]) if prompts else np.zeros((0, 0), np.float32)

    def _encode(self, prompts: list[str]) -> np.ndarray:
        feeds = {self.component.inputs[0].name: self.tokenizer(prompts)}
        self.encoded += len(prompts)
        return self._session.run(feeds)[self.component.outputs[0].name].astype(np.float32)
