"""A frame's two scoring branches, fused into one grid: the language prompts and the known-good references.

The language branch needs CLIP's text tower; the reference branch needs a memory
of known-good images. Either alone scores a frame; with both, the reference grid
is weighted in by `reference_weight`. A patch encoder without text and without
references cannot score anything, and says what to give it.

Only the language branch has a global score (the whole image against the
prompts). The reference branch's image score is its map's peak alone, the
nearest-neighbour rule of PatchCore: the distance of a frame's global embedding
to the references' was measured as noise at few shots (1-shot mean image AUROC
0.68 blended in against 0.93 without, synthetic textures) and a loss on solar
cells at 16 (benchmarks/reports/accuracy-*), so it is not blended in.
"""

from __future__ import annotations

import time

import numpy as np

from ..settings import DetectorSettings
from .encoders import require_finite
from .prompt_text import PromptText
from .references import ReferenceMemory
from .scoring import abnormal_probability, fuse, language_grid


def score_branches(
    category: str,
    global_emb: np.ndarray,
    taps: list[np.ndarray],
    grid_shape: tuple[int, int],
    prompt_text: PromptText | None,
    memory: ReferenceMemory | None,
    settings: DetectorSettings,
    times: dict,
    where: object = "",
) -> tuple:
    """-> (category text or None, (rows, cols) grid, global p or None, branches); each branch's time into `times`.
    The global p is the language branch's, None without it (the image score is then the map's alone).

    `global_emb` (D,) and `taps` [(N, D)] are the image encoder's outputs over a
    `grid_shape` (rows, cols) of tokens; `where` names the bundle in the refusal.
    """
    s, grid, global_p, text, branches = settings, None, None, None, ()
    if prompt_text is not None:
        t = time.perf_counter()
        text = prompt_text.category(category)
        require_finite("the text embeddings", text.classes, text.labels)
        grid = language_grid(taps, text.classes, s.logit_scale, grid_shape)
        global_p = float(abnormal_probability(global_emb, text.classes, s.logit_scale))
        branches += ("language",)
        times["language"] = _ms(t)
    elif memory is None:
        raise ValueError(
            f"bundle {where} has no language branch (no CLIP text graph): "
            "give normal reference images (--references DIR or --teach N)"
        )
    if memory is not None:
        t = time.perf_counter()
        ref_grid, _ = memory.score(global_emb, taps, grid_shape)
        grid = fuse(grid, ref_grid, s.reference_weight) if grid is not None else ref_grid
        branches += ("reference",)
        times["reference"] = _ms(t)
    return text, grid, global_p, branches


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
