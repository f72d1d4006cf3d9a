"""The few-shot branch's memory of known-good images, and a frame scored against it.

    memory = detector.remember(good_images, colour="BGR")    # encoded once (or read from the cache)
    result = detector.detect(frame, "screw", references=memory)

A memory is keyed by the content of its images (never by the identity of a
list), and names the encoder that built it: it is only valid with that graph.
A frame's patches are searched first in a coreset of the references' patches
(all of them at coreset_ratio 1.0) by the blocked numpy search or a faiss index,
then the farthest again in all of them (neighbours.py: the image score stays the
exact search's); built once per reference set and kept on disk by content
(reference_cache.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import reference_cache
from .neighbours import coreset_indices, index_kind, local_max_similarity, searcher
from .registration import AUTO, resolve_window
from .scoring import MIN_SCALE, SCALE_REFERENCES, as_distance, calibrated, normal_spread, reference_grid

CORESET_SEED = 0


def content_key(images: list[np.ndarray]) -> str:
    """A hash of the images' shapes and pixels: equal images give equal keys, whatever list holds them."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class ReferenceMemory:
    """What the few-shot branch keeps of its normal references."""

    key: str  # content hash of the reference images (RGB uint8)
    encoder: str  # identity of the image encoder that built it (ImageEncoder.identity)
    count: int  # reference images
    globals: np.ndarray  # (R, D)
    taps: tuple[np.ndarray, ...]  # per tap (K, D): the coreset's rows, K = ceil(coreset_ratio * R * N)
    spread: float  # normal patch-distance spread (scoring.normal_spread)
    global_spread: float  # largest leave-one-out global distance among references
    coreset_ratio: float = 1.0  # kept fraction of the references' patches (1.0: all, exact search)
    index: str = "numpy"  # the search over `taps`: "numpy" (exact, blocked) or "faiss" (HNSW)
    saved_index: tuple = field(default=(), compare=False, repr=False)  # per tap a faiss index's bytes, or ()
    complete: tuple = field(default=(), compare=False, repr=False)  # per tap (R * N, D) when `taps` is a coreset
    window: int = 0  # > 0: position-aware, each patch against the references' within this many grid cells
    searches: tuple = field(init=False, compare=False, repr=False)  # per tap, built from the above

    def __post_init__(self):
        saved = self.saved_index or (None,) * len(self.taps)
        complete = self.complete or (None,) * len(self.taps)
        searches = tuple(searcher(t, self.index, s, c) for t, s, c in zip(self.taps, saved, complete))
        object.__setattr__(self, "searches", searches)

    @classmethod
    def build(
        cls,
        encoder,
        images: list[np.ndarray],
        coreset_ratio: float = 1.0,
        nn_index: str = "numpy",
        cache: Path | None = None,
        window: int = 0,
    ) -> ReferenceMemory:
        """HxWx3 uint8 RGB images (any sizes: resized like any frame) through `encoder` (an ImageEncoder);
        read from `cache` (a folder) when this reference set was built there before, else built and saved.
        `window` > 0: a position-aware memory (registered parts), every patch kept, no coreset;
        `window` AUTO (-1): position-aware when the references align (registration.py), else anywhere."""
        if not images:
            raise ValueError("a reference memory needs at least one known-good image")
        key = content_key(images)
        if window > 0:
            coreset_ratio, nn_index = 1.0, "numpy"
        kind = index_kind(nn_index, math.ceil(coreset_ratio * len(images) * math.prod(encoder.grid)))
        path = None
        if cache is not None:
            shape = f"{kind} window {'auto' if window == AUTO else window}"
            path = reference_cache.cache_file(cache, key, encoder.identity, coreset_ratio, CORESET_SEED, shape)
            memory = cls.from_arrays(reference_cache.load(path))
            if memory is not None and (memory.key, memory.encoder) == (key, encoder.identity):
                if memory.index == kind or (window == AUTO and memory.window > 0):
                    return memory
        encoded = [encoder.encode(image) for image in images]
        memory = cls.from_encoded(key, encoder.identity, encoded, coreset_ratio, kind, window, encoder.grid)
        if path is not None:
            reference_cache.save(path, memory.to_arrays())
        return memory

    @classmethod
    def from_encoded(
        cls,
        key: str,
        encoder: str,
        encoded: list[tuple[np.ndarray, list[np.ndarray]]],
        coreset_ratio: float = 1.0,
        nn_index: str = "numpy",
        window: int = 0,
        grid: tuple[int, int] | None = None,
    ) -> ReferenceMemory:
        """A memory from `encoded`, each reference's (global (D,), taps [(N, D)]) as ImageEncoder.encode gives;
        `nn_index` the setting (auto, numpy, faiss); `window` > 0 (with the encoder's `grid`): position-aware;
        AUTO: decided from how well the references align (registration.resolve_window)."""
        if not encoded:
            raise ValueError("a reference memory needs at least one known-good image")
        per_ref = [t for _, t in encoded]
        window = resolve_window(window, per_ref, grid)
        if window:
            coreset_ratio, nn_index = 1.0, "numpy"  # every patch, in its place
        globals_ = np.stack([g for g, _ in encoded])  # (R, D)
        per_tap = [np.concatenate([t[i] for _, t in encoded]) for i in range(len(encoded[0][1]))]  # (R * N, D)
        keep = coreset_indices(np.concatenate(per_tap, axis=1), coreset_ratio, CORESET_SEED)  # one set for all taps
        taps = tuple(np.ascontiguousarray(t[keep]) for t in per_tap)  # (K, D)
        complete = tuple(per_tap) if len(keep) < len(per_tap[0]) else ()
        spread = local_spread(per_ref, grid, window) if window else normal_spread(per_ref)  # of the exact search
        index = index_kind(nn_index, len(keep))
        globals_spread = global_spread(globals_)
        return cls(
            key,
            encoder,
            len(encoded),
            globals_,
            taps,
            spread,
            globals_spread,
            coreset_ratio,
            index,
            (),
            complete,
            window,
        )

    def score(self, global_emb: np.ndarray, taps: list[np.ndarray], grid: tuple[int, int]) -> tuple[np.ndarray, float]:
        """A frame's (D,) embedding and [(N, D)] tap tokens -> (rows, cols) reference map and global probability."""
        if self.window:
            refs = [t.reshape(self.count, -1, t.shape[-1]) for t in self.taps]  # (R, N, D): all, in order
            similarity = [local_max_similarity(tokens, r, grid, self.window) for tokens, r in zip(taps, refs)]
            distance = np.mean([as_distance(s) for s in similarity], axis=0)
            ref_grid = calibrated(distance, self.spread).reshape(grid).astype(np.float32)
        else:
            ref_grid = reference_grid(taps, self.searches, grid, self.spread)
        global_p = float(calibrated((1.0 - (self.globals @ global_emb).max()) / 2.0, self.global_spread))
        return ref_grid, global_p

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything the memory holds, as named arrays (reference_cache.save)."""
        arrays = {
            "key": np.array(self.key),
            "encoder": np.array(self.encoder),
            "count": np.array(self.count),
            "globals": self.globals,
            "spread": np.array(self.spread),
            "index": np.array(self.index),
            "global_spread": np.array(self.global_spread),
            "coreset_ratio": np.array(self.coreset_ratio),
            "window": np.array(self.window),
        }
        for i, (tap, search) in enumerate(zip(self.taps, self.searches)):
            arrays[f"tap{i}"] = tap
            if self.complete:
                arrays[f"complete{i}"] = self.complete[i]
            saved = search.to_bytes()
            if saved is not None:
                arrays[f"index{i}"] = np.frombuffer(saved, np.uint8)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray] | None) -> ReferenceMemory | None:
        """The memory `to_arrays` wrote, or None when `arrays` is None or not one."""
        if arrays is None:
            return None
        try:
            taps = tuple(arrays[f"tap{i}"] for i in range(sum(k.startswith("tap") for k in arrays)))
            saved = tuple(arrays[f"index{i}"].tobytes() for i in range(len(taps)) if f"index{i}" in arrays)
            complete = tuple(arrays[f"complete{i}"] for i in range(len(taps)) if f"complete{i}" in arrays)
            return cls(
                str(arrays["key"]),
                str(arrays["encoder"]),
                int(arrays["count"]),
                arrays["globals"],
                taps,
                float(arrays["spread"]),
                float(arrays["global_spread"]),
                float(arrays["coreset_ratio"]),
                str(arrays["index"]),
                saved,
                complete,
                int(arrays["window"]),
            )
        except (KeyError, ValueError, TypeError, RuntimeError):
            return None


def local_spread(per_ref: list[list[np.ndarray]], grid: tuple[int, int], window: int) -> float:
    """normal_spread for the position-aware search: each reference's patches against the others' within
    `window` cells (with one reference, normal_spread's comparison inside the image)."""
    if len(per_ref) == 1:
        return normal_spread(per_ref)
    dists = []
    for r in range(min(len(per_ref), SCALE_REFERENCES)):
        per_tap = []
        for t in range(len(per_ref[0])):
            others = np.stack([per_ref[o][t] for o in range(len(per_ref)) if o != r])  # (R - 1, N, D)
            per_tap.append(as_distance(local_max_similarity(per_ref[r][t], others, grid, window)))
        dists.append(np.mean(per_tap, axis=0))
    return max(float(np.percentile(np.concatenate(dists), 99)), MIN_SCALE)


def global_spread(globals_: np.ndarray) -> float:
    """(R, D) unit rows -> the largest leave-one-out distance (1 - cos) / 2 among them (MIN_SCALE for one)."""
    if len(globals_) < 2:
        return MIN_SCALE
    sims = globals_ @ globals_.T
    np.fill_diagonal(sims, -1.0)
    return max(float(((1.0 - sims.max(axis=1)) / 2.0).max()), MIN_SCALE)


Build = Callable[[list[np.ndarray]], ReferenceMemory]


def memory_for(refs, encoder, last: ReferenceMemory | None = None, build: Build | None = None):
    """What a frame is scored against: `refs` a ReferenceMemory (refused unless `encoder` built it),
    HxWx3 uint8 RGB images (`last` again when their content is the same, else `build(refs)`), or None."""
    if isinstance(refs, ReferenceMemory):
        if refs.encoder != encoder.identity:
            raise ValueError(
                f"these references were encoded by {refs.encoder}, not by this detector's "
                f"{encoder.identity}: remember them with this detector"
            )
        return refs
    if not refs:
        return None
    if last is not None and last.key == content_key(refs):
        return last
    return build(refs) if build is not None else ReferenceMemory.build(encoder, refs)
