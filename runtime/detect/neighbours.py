"""Nearest neighbours in a reference memory: a coreset of its patches, and the search over them.

    keep = coreset_indices(bank, ratio=0.1)          # greedy k-center: 10% of the rows, covering the rest
    search = searcher(bank[keep], "auto")            # faiss when importable, else blocked numpy
    similarity = search.max_similarity(tokens)       # (N,) largest cosine to any kept row

Banks and tokens are (M, D) / (N, D) float32 rows of unit length. The numpy
search is exact and holds at most BLOCK_ELEMENTS similarities at once, whatever
the bank's size; the faiss index (pip install 'lineside[fast]') is an HNSW graph,
approximate, and much faster on large banks. Every search answers the same
question: the cosine of each token's nearest bank row.
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
EXACT_FRACTION = 0.05  # faiss: the tokens farthest from the bank (those that set the score) are searched exactly
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
    """An HNSW graph over the bank (faiss-cpu), built once and kept on disk as bytes.

    A graph search can stop at a row that is not the nearest, so it only ever
    overstates a distance, and does so mostly for tokens far from every normal
    patch: the EXACT_FRACTION of tokens it finds farthest, which decide the map's
    peak and so the image score, are searched again exactly.
    """

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
        self.exact = NumpySearch(bank)

    def max_similarity(self, tokens: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) largest cosine to any bank row (exact for the farthest EXACT_FRACTION)."""
        tokens = np.ascontiguousarray(tokens, np.float32)
        similarity = self.index.search(tokens, 1)[0][:, 0].copy()  # (N,)
        k = math.ceil(EXACT_FRACTION * len(tokens))
        if k:
            far = np.argpartition(similarity, k - 1)[:k]  # the k lowest similarities
            similarity[far] = self.exact.max_similarity(tokens[far])
        return similarity

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index(self.index).tobytes()


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


def searcher(bank: np.ndarray, kind: str, saved: bytes | None = None) -> NumpySearch | FaissSearch:
    """The search over `bank` of `kind` ("numpy" or "faiss", from `index_kind`); `saved` a faiss index's bytes."""
    return FaissSearch(bank, saved) if kind == "faiss" else NumpySearch(bank)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise RuntimeError("nn_index faiss needs faiss-cpu: pip install 'lineside[fast]'") from e
    return faiss
