"""Stage 3 of the prompt agent: merge near duplicates, then drop false-alarm prompts.

Checks, in order, each recorded with its figures:
* merged: text embedding within `merge_cosine` of a candidate already kept;
* restates a normal feature: its defect words are words the model used for
  what a normal part looks like;
* nearer normal: cosine to the normal class >= cosine to the abnormal class;
* fires on normal references: with [normal class, candidate] as the two
  classes, its patch map or global score on a known-good image reaches
  `fire_bound`;
* over the cap: the strongest `max_prompts` (by abnormal-minus-normal margin)
  are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..detect.prompt_bank import ABNORMAL_STATES, NORMAL_STATES, category_text, ensemble
from ..detect.scoring import abnormal_probability, class_embedding, language_grid

STOP = {"with", "from", "that", "this", "have", "part", "photo", "surface", "area", "side", "normal", "looks"}


@dataclass
class Candidate:
    text: str
    description: dict
    sources: list[int]
    checks: dict = field(default_factory=dict)
    reason: str = ""
    merged: list[str] = field(default_factory=list)

    def provenance(self) -> dict:
        return {
            "description": self.description,
            "stage1_records": self.sources,
            "checks": self.checks,
            "merged": self.merged,
        }


def content_words(text: str, ignore: set[str]) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in STOP | ignore}


def filter_candidates(
    detector,
    category: str,
    candidates: list[Candidate],
    normals: list[np.ndarray],
    normal_features: list[str],
    settings,
) -> tuple[list[Candidate], list[Candidate]]:
    """(kept, dropped), each candidate carrying its reason and figures."""
    if not candidates:
        return [], []
    encoder, scale = detector.text.encoder, detector.settings.logit_scale
    normal_c = class_embedding(encoder(ensemble(NORMAL_STATES, category)))
    abnormal_c = class_embedding(encoder(ensemble(ABNORMAL_STATES, category)))
    embeddings = encoder([c.text for c in candidates])
    encoded = [detector.encoder.encode(n) for n in normals]  # (global, taps) of each normal reference
    ignore = content_words(category_text(category), set())
    normal_words = set().union(*(content_words(f, ignore) for f in normal_features)) if normal_features else set()
    kept: list[tuple[Candidate, np.ndarray]] = []
    dropped: list[Candidate] = []
    for cand, emb in zip(candidates, embeddings):
        twin = next((k for k, e in kept if float(e @ emb) >= settings.merge_cosine), None)
        cos_n, cos_a = float(emb @ normal_c), float(emb @ abnormal_c)
        classes = np.stack([normal_c, emb])
        fire_map = max(float(language_grid(t, classes, scale, detector.encoder.grid).max()) for _, t in encoded)
        fire_global = max(float(abnormal_probability(g, classes, scale)) for g, _ in encoded)
        cand.checks = {
            "cos_normal": round(cos_n, 4),
            "cos_abnormal": round(cos_a, 4),
            "fire_map_max": round(fire_map, 4),
            "fire_global_max": round(fire_global, 4),
        }
        restated = content_words(f"{cand.description['type']} {cand.description['appearance']}", ignore) & normal_words
        if twin is not None:
            twin.merged.append(cand.text)
            cand.reason = f"merged into {twin.text!r} (text embeddings within {settings.merge_cosine})"
        elif restated:
            cand.reason = f"restates a normal feature the model named: {', '.join(sorted(restated))}"
        elif cos_n >= cos_a:
            cand.reason = f"nearer the normal prompts than the abnormal ones ({cos_n:.3f} >= {cos_a:.3f})"
        elif max(fire_map, fire_global) >= settings.fire_bound:
            cand.reason = (
                f"fires on normal references (map {fire_map:.2f}, score {fire_global:.2f} >= {settings.fire_bound})"
            )
        else:
            quiet = max(fire_map, fire_global)
            cand.reason = f"kept: abnormal margin {cos_a - cos_n:.3f}, quiet on normal references (<= {quiet:.2f})"
            kept.append((cand, emb))
            continue
        dropped.append(cand)
    kept.sort(key=lambda ke: ke[0].checks["cos_normal"] - ke[0].checks["cos_abnormal"])
    for cand, _ in kept[settings.max_prompts :]:
        cand.reason = f"over the cap of {settings.max_prompts} prompts"
        dropped.append(cand)
    return [c for c, _ in kept[: settings.max_prompts]], dropped
