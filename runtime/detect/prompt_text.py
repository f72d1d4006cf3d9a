"""A category's text side: class embeddings for scoring, labelled prompts for explaining."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .prompt_bank import ABNORMAL_STATES, NORMAL_STATES, category_text, ensemble, load_bank
from .scoring import class_embedding, l2_normalize
from .text_encoder import TextEncoder


@dataclass(frozen=True)
class CategoryText:
    """`classes` (2, D): [normal, abnormal]. `labels` (1 + K, D): normal, then the K
    abnormal prompts named in `texts` (the generic ensemble first, then the bank's)."""

    category: str
    classes: np.ndarray
    labels: np.ndarray
    texts: tuple[str, ...]
    bank_prompts: int


def build_category_text(encoder: TextEncoder, category: str, prompt_dir: Path) -> CategoryText:
    if not category or not category.strip():
        raise ValueError("category must be a non-empty name such as 'screw' or 'metal_nut'")
    bank = load_bank(prompt_dir, category)
    defects = bank.kept if bank else []
    normal = encoder(ensemble(NORMAL_STATES, category))
    generic = encoder(ensemble(ABNORMAL_STATES, category))
    defect_embs = encoder(defects) if defects else np.zeros((0, normal.shape[1]), np.float32)
    normal_c = class_embedding(normal)
    abnormal_c = class_embedding(np.concatenate([generic, defect_embs]))
    labels = np.stack([normal_c, class_embedding(generic), *l2_normalize(defect_embs)])
    texts = (f"damaged {category_text(category)}", *defects)
    return CategoryText(category, np.stack([normal_c, abnormal_c]), labels, texts, len(defects))
