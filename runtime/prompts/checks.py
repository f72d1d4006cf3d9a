"""Checks on what a language model says before anyone sees it.

A small model fills space: it repeats itself, copies its prompt's example, names
places and looks the detector never measured. Its sentence on an NG frame is
kept only when every location, tone, shape and number in it is in the rule
explanation it was given; its answers while writing a prompt bank are refused
when they copy the system prompt's example or name features the category lacks.
Each check returns the reason for refusing, or "" to keep.
"""

from __future__ import annotations

import re

LOCATION_WORDS = {"upper", "lower", "top", "bottom", "left", "right", "centre", "middle"}
TONES = {
    "darker": {"dark", "darker", "black", "shadow", "shadowy", "dim"},
    "brighter": {"bright", "brighter", "white", "light", "lighter", "shiny", "glare"},
}
SHAPES = {
    "line-like": {"line", "lines", "line-like", "linear", "scratch", "scratches", "crack", "cracks", "streak", "thin"},
    "blob-like": {"blob", "blob-like", "spot", "spots", "stain", "hole", "dot", "round", "patch", "speck"},
}
# Words a plain sentence about a finding needs beyond the facts; more than MAX_NEW_WORDS others is a story.
PLAIN = set(
    "a an the of at in on near is are was has have with and its it this that there one two which found shows "
    "defect defects defective part surface corner side area region visible small large long short appears can be "
    "seen see".split()
)
MAX_NEW_WORDS = 2
COPY_WORDS = 6  # a run of this many words shared with the instructions is a copy, not an answer


def words(text: str) -> list[str]:
    text = text.lower().replace("center", "centre").replace("colour", "color")
    return re.findall(r"[a-z]+(?:-[a-z]+)?", text)


def numbers(text: str) -> set[str]:
    return {n.rstrip("0").rstrip(".") if "." in n else n for n in re.findall(r"\d+(?:\.\d+)?", text)}


def repeats(text: str, n: int = 4) -> bool:
    """A run of `n` words said twice, or a sentence said twice: a model looping, not explaining."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    sentences = [s.strip().lower() for s in re.split(r"[.!?]+", text) if s.strip()]
    return len(grams) != len(set(grams)) or len(sentences) != len(set(sentences))


def copies(text: str, source: str, n: int = COPY_WORDS) -> bool:
    """`text` shares a run of `n` words with `source` (the instructions or their example)."""
    w, s = words(text), words(source)
    mine = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
    return bool(mine & {tuple(s[i : i + n]) for i in range(len(s) - n + 1)})


def check_sentence(sentence: str, explanation: dict, instructions: str, facts: str = "", max_words: int = 40) -> str:
    """Why the model's `sentence` about an NG frame must not be shown ("" when it may).

    `explanation` is the rule explanation it was given, `facts` the words it was
    told; `instructions` the system prompt and question (copying those is not an answer).
    """
    w = words(sentence)
    if not 3 <= len(w) <= max_words:
        return f"{len(w)} words: not one short sentence"
    if copies(sentence, instructions):
        return "copies the instructions or their example"
    regions = explanation.get("regions", [])
    said = set(w)
    places = {x for e in regions for x in e["location"].split()}
    if said & LOCATION_WORDS - places:
        return f"names a place the evidence does not: {', '.join(sorted(said & LOCATION_WORDS - places))}"
    if regions and not said & places:
        return f"does not say where (the evidence: {', '.join(e['location'] for e in regions)})"
    for key, vocabulary in (("tone", TONES), ("shape", SHAPES)):
        measured = {e.get(key) for e in regions}
        for value, terms in vocabulary.items():
            if said & terms and value not in measured:
                evidence = ", ".join(sorted(str(m) for m in measured if m)) or f"nothing of its {key}"
                return f"calls it {', '.join(sorted(said & terms))}; the evidence says {evidence}"
    known = set(words(explanation.get("text", "") + " " + facts)) | PLAIN | LOCATION_WORDS
    known |= {x for terms in (*TONES.values(), *SHAPES.values()) for x in terms}
    unknown = sorted(set(w) - known)
    if len(unknown) > MAX_NEW_WORDS:
        return f"adds what the evidence does not say: {', '.join(unknown)}"
    stray = numbers(sentence) - numbers(explanation.get("text", "")) - {str(i) for i in range(1, len(regions) + 1)}
    if stray:
        return f"numbers not in the evidence: {', '.join(sorted(stray))}"
    # Last: a story that names the part twice ("... of the solar cell is ... of the solar cell's design")
    # is refused for the story it adds, which is the reason; a loop of the facts' own words for looping.
    return "repeats itself" if repeats(sentence) else ""


def check_descriptions(descriptions: list[dict], normals: list[str], example: dict, category: str, places) -> str:
    """Why a bank-building answer must be retried ("" when it may be used).

    `example` is the system prompt's example answer: a field copied from it, or a
    word of the example's object (bottle: neck, rim, glass) that the category's
    name lacks, is the model echoing its prompt about another part. `places`: the
    evidence's locations, when the question gave any; a description must be at one
    of them (or on the part at large).
    """
    own = set(words(category))
    copied_fields = {d[k] for d in example["defects"] for k in ("location", "appearance")} | set(
        example["normal_features"]
    )
    # The example part's own features (its places, the nouns of its normal features, its name), not its adjectives.
    nouns = [d["location"] for d in example["defects"]] + [f.split()[-1] for f in example["normal_features"]]
    foreign = {x for text in nouns + [example["object"]] for x in words(text)} - own
    for d in descriptions:
        for key in ("location", "appearance"):
            if d[key] in copied_fields:
                return f"copies the example's {key} '{d[key]}'"
        strange = set(words(" ".join(d.values()))) & foreign
        if strange:
            return f"names {', '.join(sorted(strange))}, which the example has and a {category} does not"
        if places and not set(words(d["location"])) & ({x for p in places for x in p.split()} | GENERAL_PLACES):
            return f"places a defect at '{d['location']}', where the evidence shows none ({', '.join(places)})"
    for f in normals:
        if f in copied_fields or set(words(f)) & foreign:
            return f"copies the example's normal feature '{f}'"
    return ""


GENERAL_PLACES = {"surface", "part", "whole", "edge", "edges", "body", "overall"}
