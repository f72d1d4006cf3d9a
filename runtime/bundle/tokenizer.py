"""CLIP's byte-level BPE tokenizer, torch-free, driven by the bundle's vocabulary file.

The text graph was trained on ids produced by a specific cleaning + BPE pipeline;
any difference here silently shifts every text embedding, so tests compare these
ids with open_clip's own tokenizer, non-ASCII and over-long prompts included.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Iterable
from pathlib import Path

import ftfy
import numpy as np
import regex

from .manifest import REBUILD_HINT, BundleError

SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """Every byte -> a printable unicode character, so BPE never sees control bytes.

    Printable Latin-1 bytes map to themselves; the other 68 bytes are moved, in
    order, to code points from 256 upwards. This is the mapping CLIP's vocabulary
    was built with.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(keep)
    moved = [b for b in range(256) if b not in kept]
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return table


def clean_text(text: str) -> str:
    """Repair mojibake, unescape HTML twice, collapse whitespace, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Text -> (B, context_length) int64 ids: [sot, bpe ids..., eot, 0...].

    Over-long texts are cut to the context length with the last id forced to eot,
    which is where the text graph pools its embedding.
    """

    def __init__(self, merges_file: Path, context_length: int = 77, num_merges: int = 48894):
        lines = gzip.open(merges_file, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : num_merges + 1]]
        base = list(byte_alphabet().values())
        vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.ids = {piece: i for i, piece in enumerate(vocab)}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.context_length = context_length
        self.sot, self.eot = self.ids[SPECIAL_TOKENS[0]], self.ids[SPECIAL_TOKENS[1]]
        specials = "|".join(regex.escape(s) for s in SPECIAL_TOKENS)
        self.splitter = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self._word_cache: dict[str, list[int]] = {}

    @classmethod
    def from_component(cls, folder: Path, component) -> ClipTokenizer:
        """Build from a bundle's text encoder (its `tokenizer` asset and config); the vocabulary's start and
        end ids must be the ones the manifest recorded at export, else it is not the vocabulary the graph knows."""
        cfg = component.config["tokenizer"]
        tokenizer = cls(Path(folder) / component.assets["tokenizer"].path, cfg["context_length"], cfg["num_merges"])
        if (tokenizer.sot, tokenizer.eot) != (cfg["sot"], cfg["eot"]):
            at = f"{folder}: components.{component.name}.config.tokenizer"
            raise BundleError(
                f"{at} sot/eot {cfg['sot']}/{cfg['eot']} differ from its vocabulary's {tokenizer.sot}/{tokenizer.eot} "
                f"(not the vocabulary the text graph was exported with); {REBUILD_HINT}"
            )
        return tokenizer

    def _merge(self, word: str) -> list[int]:
        """Apply BPE merges to one pre-split word (already byte-mapped), lowest rank first."""
        if word in self.ids and word in SPECIAL_TOKENS:
            return [self.ids[word]]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.ids[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without sot/eot and without truncation."""
        alphabet = byte_alphabet()
        out: list[int] = []
        for word in self.splitter.findall(clean_text(text)):
            mapped = "".join(alphabet[b] for b in word.encode("utf-8"))
            if mapped not in self._word_cache:
                self._word_cache[mapped] = self._merge(mapped)
            out.extend(self._word_cache[mapped])
        return out

    def __call__(self, texts: str | Iterable[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][: self.context_length]
            ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out
