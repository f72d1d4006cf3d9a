"""Whether the references are registered parts, told from the references themselves.

A part that sits in the same place in every frame (a solar cell, a board, a
label) is best compared patch by patch with the same neighbourhood of the
references: a scratch that looks like a busbar elsewhere is still out of place.
A part that moves (textures, loose parts) must be compared with every patch. The
references say which: where the parts are registered, a patch's nearest match in
the other references lies at its own place, so the distance to the best match
within one grid cell is about the distance to the best match anywhere. Where they
move, the match in place is far worse. `reference_window` -1 (auto) asks for
this decision at remember time.
"""

from __future__ import annotations

import logging

import numpy as np

from .neighbours import NumpySearch, local_max_similarity
from .scoring import as_distance

log = logging.getLogger("lineside.references")

AUTO = -1  # the reference_window value that asks for the decision
REGISTERED_WINDOW = 1  # the window an aligned reference set gets
REGISTERED_RATIO = 1.6  # in-place distance at most this times the anywhere distance: registered
# Fewer references than this are compared anywhere, aligned or not: with a handful of references a patch's own
# place holds a handful of candidates, and a good part whose layout differs from all of them (an ELPV cell with
# its busbars a few pixels over) is called a defect. Measured over 5 reference draws (issue 23): in place from 2
# references gave poly cells 0.655 image AUROC at 2 shots and 0.765 at 4; from 8, 0.773 and 0.793 (the search
# anywhere: 0.774 and 0.788), mono as good or better at every shot count.
MIN_REGISTERED_REFERENCES = 8
QUERIES = 4  # references whose patches are looked up in the others
OTHERS = 8  # at most this many other references searched
SAMPLE = 256  # patches per query reference (a fixed, seeded sample)


def alignment(per_ref: list[list[np.ndarray]], grid: tuple[int, int], seed: int = 0) -> float:
    """Per reference, per tap (N, D) unit rows on `grid` -> the mean distance of a patch to the other
    references' patches within one cell of its place, over the mean distance to their nearest patch
    anywhere: about 1 for registered parts, larger the more they move. NaN with fewer than 2 references."""
    if len(per_ref) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = per_ref[0][0].shape[0]
    local, anywhere = [], []
    for q in range(min(len(per_ref), QUERIES)):
        others = [o for o in range(len(per_ref)) if o != q][:OTHERS]
        pick = np.sort(rng.choice(n, min(SAMPLE, n), replace=False))
        for t in range(len(per_ref[q])):
            tokens = per_ref[q][t]
            stacked = np.stack([per_ref[o][t] for o in others])  # (R', N, D)
            local.append(as_distance(local_max_similarity(tokens, stacked, grid, 1))[pick])
            bank = stacked.reshape(-1, stacked.shape[-1])  # (R' * N, D)
            anywhere.append(as_distance(NumpySearch(bank).max_similarity(tokens[pick])))
    return float(np.mean(local) / max(float(np.mean(anywhere)), 1e-6))


def resolve_window(window: int, per_ref: list[list[np.ndarray]], grid: tuple[int, int] | None) -> int:
    """The window a memory is built with: `window` itself unless AUTO, then REGISTERED_WINDOW when there are
    MIN_REGISTERED_REFERENCES or more and they align (alignment <= REGISTERED_RATIO), else 0 (anywhere)."""
    if window != AUTO:
        if window < 0:
            raise ValueError(f"reference_window {window}: use 0 (anywhere), a number of grid cells, or -1 (auto)")
        return window
    if grid is None or len(per_ref) < MIN_REGISTERED_REFERENCES:
        log.info(
            "reference_window auto: %d reference(s), fewer than %d: compared anywhere",
            len(per_ref),
            MIN_REGISTERED_REFERENCES,
        )
        return 0
    ratio = alignment(per_ref, grid)
    chosen = REGISTERED_WINDOW if ratio <= REGISTERED_RATIO else 0
    log.info("reference_window auto: in-place / anywhere distance %.2f -> window %d", ratio, chosen)
    return chosen
