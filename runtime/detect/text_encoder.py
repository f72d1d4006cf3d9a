"""Text embeddings through the bundle's text graph, computed once and kept on disk.

Prompts change rarely and the text graph is a third of CLIP, so every embedding
is cached by bundle id and prompt text; a new bundle never reads an old entry
(the id covers the graphs' hashes, tensors, preprocessing and config).

The cache is a folder anyone (a full disk, a copy, a hand) can damage, so an
entry is trusted only when it proves itself: each file holds its vector beside
the content key it was computed for (bundle id and the whole prompt), and is
read only as a finite float32 vector of the graph's width under the key
expected. Anything else is a warning, then computed again and rewritten, so a
bad entry costs one text pass, never every frame after it.

The graph is opened in the constructor even when every prompt is cached: a
swapped or broken text graph must stop the process at start, not on the first
new category hours later on the line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ..bundle.loader import Bundle
from ..bundle.manifest import REBUILD_HINT, BundleError
from ..bundle.tokenizer import ClipTokenizer
from .encoders import graph_entry

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
        self.bundle_id = bundle.bundle_id
        width = component.outputs[0].shape[-1] if component.outputs and component.outputs[0].shape else None
        self.width = width if isinstance(width, int) else None  # None: the graph's width is dynamic
        self._memory: dict[str, np.ndarray] = {}
        self.encoded = 0  # prompts run through the graph (not found in the cache) since start

    def graphs(self) -> dict[str, dict]:
        """{graph: {precision, providers, requested}}: the text graph, always fp32 (each prompt runs once)."""
        return {self.component.name: graph_entry("fp32", self._session)}

    def _file(self, prompt: str) -> Path:
        return self.cache / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32] + ".npz")

    def key(self, prompt: str) -> str:
        """The content key of `prompt`'s embedding: the bundle and the whole prompt (the file name has
        only part of the prompt's hash, and a file copied under another name must not pass)."""
        return hashlib.sha256(f"{self.bundle_id}\n{prompt}".encode()).hexdigest()

    def _load(self, prompt: str) -> np.ndarray | None:
        if prompt in self._memory:
            return self._memory[prompt]
        path = self._file(prompt)
        if not path.exists():
            return None
        vector, why = self._read(path, prompt)
        if why:
            log.warning("text cache entry %s %s; computing it again and rewriting it", path, why)
            return None
        self._memory[prompt] = vector
        return vector

    def _read(self, path: Path, prompt: str) -> tuple[np.ndarray | None, str]:
        """(the entry's vector, "") or (None, what is wrong with it)."""
        try:
            with np.load(path, allow_pickle=False) as entry:
                if set(entry.files) != {"key", "vector"}:
                    return None, f"holds {sorted(entry.files)}, not a key and a vector"
                key, vector = entry["key"], entry["vector"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
            return None, f"is unreadable or not an entry ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        if key.dtype.kind != "U" or key.shape != () or str(key) != self.key(prompt):
            return None, "was computed for another prompt or bundle (its content key differs)"
        if vector.dtype != np.float32 or vector.ndim != 1 or (self.width is not None and vector.shape != (self.width,)):
            return None, f"has shape {vector.shape} {vector.dtype}, not ({self.width or 'D'},) float32"
        if not np.isfinite(vector).all():
            return None, "holds NaN or infinite values"
        return vector, ""

    def _store(self, prompt: str, vector: np.ndarray) -> None:
        self._memory[prompt] = vector
        if not np.isfinite(vector).all():
            return  # kept in memory for the detector's finite checks to refuse; never written as an entry
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            tmp = self._file(prompt).with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, key=np.array(self.key(prompt)), vector=vector)
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

    def fresh(self, prompts: list[str]) -> np.ndarray:
        """(P, D) embeddings from the graph itself, the cache neither read nor written: a start check must
        run the graph, which a warm cache would otherwise leave untried until the next new prompt."""
        feeds = {self.component.inputs[0].name: self.tokenizer(prompts)}
        return self._session.run(feeds)[self.component.outputs[0].name].astype(np.float32)

    def _encode(self, prompts: list[str]) -> np.ndarray:
        self.encoded += len(prompts)
        return self.fresh(prompts)
