"""Nearest neighbours in a reference memory: a coreset of its patches, and the search over them.

    keep = coreset_indices(bank, ratio=0.1)                 # greedy k-center: 10% of the rows, covering the rest
    search = searcher(bank[keep], "numpy", complete=bank)   # blocked numpy; the farthest tokens again in `bank`
    similarity = search.max_similarity(tokens)              # (N,) cosine of each token's nearest row

Banks and tokens are (M, D) / (N, D) float32 rows of unit length. The numpy
search is exact and holds at most BLOCK_ELEMENTS similarities at once, whatever
the bank's size; the faiss index (pip install 'lineside[fast]') is an HNSW graph,
approximate, and much faster on large banks. Every search answers the same
question: the cosine of each token's nearest bank row; a coreset's or a graph's
answer is `Refined`: its farthest tokens are searched again in the complete bank.
"""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np

log = logging.getLogger("lineside.neighbours")

BLOCK_ELEMENTS = 1 << 22  # similarities held at once by the numpy search: 16 MB of float32
PROJECTION_DIM = 128  # greedy k-center measures distances in a random projection of at most this many dims
INDEXES = ("auto", "numpy", "faiss")
HNSW_LINKS, HNSW_BUILD, HNSW_SEARCH = 32, 80, 64  # faiss HNSW: links per node, efConstruction, efSearch
EXACT_FRACTION = 0.01  # coreset, faiss: the tokens farthest from the bank (they set the score) searched exactly
FAISS_MIN_ROWS = 4096  # below this many bank rows the blocked numpy search is as fast as a graph


def coreset_indices(bank: np.ndarray, ratio: float, seed: int = 0) -> np.ndarray:
    """(M, D) rows -> sorted indices of ceil(ratio * M) of them, chosen by greedy k-center (PatchCore).

    Each next row is the one farthest from the rows already chosen, so every row
    of the bank lies within the smallest radius greedy finds of a chosen one: a
    normal patch keeps a near neighbour, and repeated background collapses to a
    few rows. ratio 1.0 keeps every row. Deterministic for a given `seed`.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio {ratio} must be in (0, 1]")
    m = len(bank)
    k = max(1, math.ceil(ratio * m))
    if k >= m:
        return np.arange(m)
    rng = np.random.default_rng(seed)
    x = np.asarray(bank, np.float32)
    if x.shape[1] > PROJECTION_DIM:  # Johnson-Lindenstrauss: distances kept to a few percent
        x = x @ (rng.standard_normal((x.shape[1], PROJECTION_DIM)).astype(np.float32) / math.sqrt(PROJECTION_DIM))
    norms = np.einsum("ij,ij->i", x, x)  # (M,)
    nearest = np.full(m, np.inf, np.float32)  # squared distance of each row to the chosen set
    chosen = np.empty(k, np.int64)
    current = int(rng.integers(m))
    for i in range(k):
        chosen[i] = current
        np.minimum(nearest, norms - 2.0 * (x @ x[current]) + norms[current], out=nearest)
        current = int(np.argmax(nearest))
    return np.sort(chosen)


class NumpySearch:
    """Exact search, blocked over the bank's rows so that memory stays bounded."""

    name = "numpy"

    def __init__(self, bank: np.ndarray):
        self.bank = np.ascontiguousarray(bank, np.float32)  # (M, D)

    def max_similarity(self, tokens: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) largest cosine to any bank row."""
        tokens = np.asarray(tokens, np.float32)
        rows = max(1, BLOCK_ELEMENTS // max(1, len(tokens)))
        best = np.full(len(tokens), -np.inf, np.float32)
        for start in range(0, len(self.bank), rows):
            np.maximum(best, (tokens @ self.bank[start : start + rows].T).max(axis=1), out=best)  # (N, rows) at most
        return best

    def to_bytes(self) -> bytes | None:
        return None  # nothing to keep: the bank is the index


class FaissSearch:
    """An HNSW graph over the bank (faiss-cpu): approximate, built once and kept on disk as bytes."""

    name = "faiss"

    def __init__(self, bank: np.ndarray, saved: bytes | None = None):
        faiss = _faiss()
        bank = np.ascontiguousarray(bank, np.float32)
        if saved is not None:
            self.index = faiss.deserialize_index(np.frombuffer(saved, np.uint8))
            if self.index.ntotal != len(bank) or self.index.d != bank.shape[1]:
                raise ValueError(f"saved index holds {self.index.ntotal}x{self.index.d}, bank is {bank.shape}")
        else:
            self.index = faiss.IndexHNSWFlat(bank.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = HNSW_BUILD
            self.index.add(bank)
        self.index.hnsw.efSearch = HNSW_SEARCH

    def max_similarity(self, tokens: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) cosine of the nearest bank row the graph finds (never above the true nearest)."""
        return self.index.search(np.ascontiguousarray(tokens, np.float32), 1)[0][:, 0].copy()

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index(self.index).tobytes()


class Refined:
    """A fast search whose farthest tokens are searched again, exactly, in the complete bank.

    A coreset or a graph search can only overstate a token's distance (its
    nearest kept or found row is never nearer than the true nearest). The
    farthest tokens decide the map's peak, and so the image score: they are
    searched exactly, EXACT_FRACTION at a time, until the farthest exact distance
    is at least every distance still from the fast search. Then the farthest
    token, and its distance, are the exact search's (the bound holds because the
    fast distances only overstate), while the bulk costs what the fast search costs.
    """

    def __init__(self, fast: NumpySearch | FaissSearch, exact: NumpySearch):
        self.fast, self.exact, self.name = fast, exact, fast.name

    def max_similarity(self, tokens: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) cosines; exact for the farthest tokens, so exact at the minimum."""
        tokens = np.ascontiguousarray(tokens, np.float32)
        similarity = self.fast.max_similarity(tokens)  # (N,)
        fast = np.ones(len(tokens), bool)  # still the fast search's (a lower bound of the exact cosine)
        step = max(1, math.ceil(EXACT_FRACTION * len(tokens)))
        while fast.any():
            pending = np.flatnonzero(fast)
            take = pending[np.argpartition(similarity[pending], min(step, len(pending)) - 1)[:step]]
            similarity[take] = self.exact.max_similarity(tokens[take])
            fast[take] = False
            if not fast.any() or similarity[~fast].min() <= similarity[fast].min():
                break
        return similarity

    def to_bytes(self) -> bytes | None:
        return self.fast.to_bytes()


def has_faiss() -> bool:
    return importlib.util.find_spec("faiss") is not None


def index_kind(choice: str, rows: int) -> str:
    """Which search a bank of `rows` rows gets: "numpy" or "faiss" (see the nn_index setting)."""
    if choice not in INDEXES:
        raise ValueError(f"nearest-neighbour index {choice!r} is not one of {', '.join(INDEXES)}")
    if choice == "faiss" and not has_faiss():
        raise RuntimeError("nn_index faiss needs faiss-cpu: pip install 'lineside[fast]' (or use nn_index numpy)")
    if choice == "auto":
        return "faiss" if rows >= FAISS_MIN_ROWS and has_faiss() else "numpy"
    return choice


def searcher(bank: np.ndarray, kind: str, saved: bytes | None = None, complete: np.ndarray | None = None):
    """The search over `bank` of `kind` ("numpy" or "faiss", from `index_kind`); `saved` a faiss index's bytes;
    `complete` the rows `bank` is a coreset of. Approximate searches (a coreset, a graph) come `Refined`."""
    fast = FaissSearch(bank, saved) if kind == "faiss" else NumpySearch(bank)
    if kind == "faiss" or complete is not None:
        return Refined(fast, NumpySearch(bank if complete is None else complete))
    return fast


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise RuntimeError("nn_index faiss needs faiss-cpu: pip install 'lineside[fast]'") from e
    return faiss


def local_max_similarity(tokens: np.ndarray, references: np.ndarray, grid: tuple[int, int], window: int) -> np.ndarray:
    """Position-aware search for registered parts (cells, boards, labels).

    (N, D) tokens of a frame and (R, N, D) references' tokens, both on the same
    (rows, cols) grid in row-major order -> (N,) the largest cosine of each token
    to any reference patch within `window` cells of its own position. Costs
    (2 * window + 1)^2 * R * N * D multiply-adds, far below a search of every patch.
    """
    rows, cols = grid
    q = np.asarray(tokens, np.float32).reshape(rows, cols, -1)
    refs = np.asarray(references, np.float32).reshape(len(references), rows, cols, -1)
    best = np.full((rows, cols), -np.inf, np.float32)
    for di in range(-window, window + 1):
        for dj in range(-window, window + 1):
            i0, i1, j0, j1 = max(0, -di), min(rows, rows - di), max(0, -dj), min(cols, cols - dj)
            if i0 >= i1 or j0 >= j1:
                continue
            shifted = refs[:, i0 + di : i1 + di, j0 + dj : j1 + dj]  # (R, h, w, D): the patch (i + di, j + dj)
            sims = np.einsum("ijd,rijd->rij", q[i0:i1, j0:j1], shifted).max(axis=0)  # (h, w)
            np.maximum(best[i0:i1, j0:j1], sims, out=best[i0:i1, j0:j1])
    return best.ravel()
