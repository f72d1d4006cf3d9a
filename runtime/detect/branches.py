"""A frame's two scoring branches, fused into one grid: the language prompts and the known-good references.

The language branch needs CLIP's text tower; the reference branch needs a memory
of known-good images. Either alone scores a frame; with both, the reference grid
is weighted in by `reference_weight`. A patch encoder without text and without
references cannot score anything, and says what to give it.
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
    """-> (category text or None, (rows, cols) grid, global p, branches); each branch's time added to `times`.

    `global_emb` (D,) and `taps` [(N, D)] are the image encoder's outputs over a
    `grid_shape` (rows, cols) of tokens; `where` names the bundle in the refusal.
    """
    s, grid, global_p, text, branches = settings, None, 0.0, None, ()
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
        ref_grid, ref_global_p = memory.score(global_emb, taps, grid_shape)
        weight = s.reference_weight if grid is not None else 1.0
        grid = fuse(grid, ref_grid, weight) if grid is not None else ref_grid
        global_p = (1 - weight) * global_p + weight * ref_global_p
        branches += ("reference",)
        times["reference"] = _ms(t)
    return text, grid, global_p, branches


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
