"""Prompts: the generic normal/abnormal ensemble, and a category's prompt bank file.

The generic states and photo templates are WinCLIP/AnomalyCLIP-style compositional
prompts that need no knowledge of the line. A prompt bank (written by the prompt
agent, `python -m runtime.prompts`) adds defect prompts for one category, each
with its provenance; the detector uses the ones marked kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lineside.prompts")

BANK_SCHEMA = "lineside.prompt_bank/1"

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
    "a blurry photo of the {}.",
)


def category_text(category: str) -> str:
    """'metal_nut' -> 'metal nut'."""
    return category.replace("_", " ").strip()


def ensemble(states: tuple[str, ...], category: str) -> list[str]:
    """Every state crossed with every template, for one category."""
    obj = category_text(category)
    return [t.format(s.format(obj)) for s in states for t in TEMPLATES]


@dataclass(frozen=True)
class BankPrompt:
    text: str
    kept: bool = True
    reason: str = ""
    provenance: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptBank:
    """One category's defect prompts with their history (kept and dropped alike)."""

    category: str
    prompts: tuple[BankPrompt, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def kept(self) -> list[str]:
        return [p.text for p in self.prompts if p.kept]

    def to_dict(self) -> dict:
        return {
            "schema": BANK_SCHEMA,
            "category": self.category,
            "meta": self.meta,
            "prompts": [p.__dict__ for p in self.prompts],
        }

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> PromptBank:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"prompt bank {path} is unreadable: {e}") from e
        if data.get("schema") != BANK_SCHEMA:
            raise ValueError(f"prompt bank {path}: schema {data.get('schema')!r}, expected {BANK_SCHEMA!r}")
        try:
            prompts = tuple(BankPrompt(**p) for p in data["prompts"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"prompt bank {path} is malformed: {e}") from e
        return cls(data["category"], prompts, data.get("meta", {}))


def load_bank(folder: Path, category: str) -> PromptBank | None:
    """The bank for `category` in `folder`, or None (with one warning) when there is none."""
    path = Path(folder) / f"{category}.json"
    if not path.is_file():
        log.warning("no prompt bank for %r in %s: generic prompts only", category, folder)
        return None
    return PromptBank.read(path)
