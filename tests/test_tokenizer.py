"""The runtime tokenizer must give open_clip's exact ids, or every text embedding shifts."""

import numpy as np
import open_clip
import pytest

from export.samples import PARITY_PROMPTS
from runtime.bundle.loader import Bundle
from runtime.bundle.tokenizer import ClipTokenizer

EXTRA = [
    "Ångström-scale pits on the wafer edge",
    "a photo of a screw with a scratch on its head.",
    "ошибка сварки",  # Cyrillic
    "溶接の欠陥 and a crack",
    "don't, won't, it's (parenthesised) <start_of_text> tokens",
    "x" * 400,  # one word far longer than the context
    "5 4 3 2 1 " * 30,
]


@pytest.fixture(scope="module")
def tokenizers(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    ours = ClipTokenizer.from_component(bundle.path, bundle.component("clip_text"))
    return ours, open_clip.get_tokenizer("lineside-tiny-clip")


@pytest.mark.parametrize("text", PARITY_PROMPTS + EXTRA)
def test_ids_match_open_clip(tokenizers, text):
    ours, theirs = tokenizers
    np.testing.assert_array_equal(ours([text]), theirs([text]).numpy())


def test_long_text_is_cut_to_context_and_ends_with_eot(tokenizers):
    ours, _ = tokenizers
    ids = ours(PARITY_PROMPTS[6])[0]
    assert ids.shape == (77,) and ids[-1] == ours.eot and (ids != 0).all()


def test_random_unicode_matches(tokenizers):
    ours, theirs = tokenizers
    rng = np.random.default_rng(7)
    alphabet = list("abcxyz ÄéñßØçøłżЖжλΩ中文字😀!?.,-'\t\n 0123456789")
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 120))) for _ in range(50)]
    np.testing.assert_array_equal(ours(texts), theirs(texts).numpy())
