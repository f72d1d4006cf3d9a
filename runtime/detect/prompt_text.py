"""A category's text side: class embeddings for scoring, labelled prompts for explaining.

`PromptText` is the detector's text part: the text encoder, the folder of prompt
banks, and each category's `CategoryText` built once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle.loader import Bundle
from ..settings import DetectorSettings
from .encoders import session_options
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


class PromptText:
    """category -> CategoryText from the text encoder and the banks in `prompt_dir`, built once per category.

    A bank edited on disk is read again only by a new PromptText (`with_folder`,
    or a new detector).
    """

    def __init__(self, encoder: TextEncoder, prompt_dir: Path):
        self.encoder, self.prompt_dir = encoder, Path(prompt_dir)
        self._categories: dict[str, CategoryText] = {}

    @classmethod
    def from_bundle(cls, bundle: Bundle, settings: DetectorSettings) -> PromptText | None:
        """The bundle's text graph (None if it has none); banks from settings.prompt_dir, else BUNDLE/prompts."""
        if bundle.by_role("text_encoder") is None:
            return None
        encoder = TextEncoder(bundle, settings.providers, settings.text_cache_dir, **session_options(settings))
        return cls(encoder, settings.prompt_dir or bundle.path / "prompts")

    def with_folder(self, prompt_dir: Path) -> PromptText:
        """The same text encoder over another folder of banks."""
        return PromptText(self.encoder, prompt_dir)

    def category(self, category: str) -> CategoryText:
        if category not in self._categories:
            self._categories[category] = build_category_text(self.encoder, category, self.prompt_dir)
        return self._categories[category]
