"""The language model's sentence on an NG frame: optional polish over the rule explanation.

The rule explanation (runtime/detect/explanation.py) is already in the NG line;
the model is asked to say the same facts as one plain sentence, from a short
prompt and a small token budget so that it takes seconds on a CPU. Its answer is
kept only when checks.check_sentence finds nothing in it that the facts lack;
otherwise the rules stand and the refusal is recorded (`model_rejected`).
"""

from __future__ import annotations

import logging
import re

from ..settings import AgentSettings
from .checks import check_sentence

log = logging.getLogger("lineside.agent")

SYSTEM = "You describe inspection findings in one short sentence, using only the given facts."
# "Write one sentence." let SmolLM2-135M go on after the facts ("... is a rare example of a mineral called
# pyrite"): 8 of 24 kept on the explanations benchmark; asking it to say only this kept 24 of 24, no slower.
ASK = "Say only this, as one short sentence."
NOUNS = {"line-like": "line", "blob-like": "spot"}
SENTENCE_END = [". ", ".\n", "! ", "? "]
SPOKEN = 1  # regions the model is told about: the strongest (two made it wander between them)


def facts(category: str, rules: dict) -> str:
    """The rule explanation as the one line of facts a small model can keep to."""
    obj = (category or "part").replace("_", " ")
    said = []
    for e in rules["regions"][:SPOKEN]:
        tone = e.get("tone", "similar in brightness")
        look = f"{tone} " if tone != "similar in brightness" else ""
        said.append(f"a {look}{NOUNS.get(e.get('shape', ''), 'change')} at the {e['location']}")
    if not said:
        return f"Facts: the {obj} differs from normal parts, with no single region standing out."
    return f"Facts: {' and '.join(said)} of the {obj}."


def first_sentences(text: str) -> str:
    """An answer cut by its token budget, back to its last complete sentence ("" when it has none)."""
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", text)]
    return text[: ends[-1]].strip() if ends else ""


def closed(text: str) -> str:
    """A sentence ended at a stop string (which the answer leaves out) with its full stop back."""
    text = text.strip()
    return text + "." if text and text[-1] not in ".!?" else text


def model_sentence(llm, rules: dict, category: str, settings: AgentSettings, deadline_s: float) -> dict:
    """The explanation with the model's sentence (origin: the model's file name), or `rules` with
    `model_rejected` saying why its sentence was not kept. Both carry the model's latency."""
    known = facts(category, rules)
    question = known + "\n" + ASK
    answer, stats = llm.chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=settings.explain_tokens,
        seed=settings.seed,
        temperature=settings.temperature,
        deadline_s=deadline_s,
        stop=SENTENCE_END,  # one sentence asked, one taken: a small model's second one is a story
    )
    timing = {"latency_s": round(float(stats["seconds"]), 3), "tokens": int(stats["tokens"])}
    if stats["finish_reason"] == "deadline":
        why = f"not finished within {deadline_s:.1f} s"
    else:
        answer = closed(answer) if stats["finish_reason"] == "stop" else first_sentences(answer)
        why = check_sentence(answer, rules, SYSTEM + " " + ASK, known) if answer else "cut off before a sentence ended"
    if why:
        log.info("model sentence refused (%s): %r", why, answer[:200])
        return rules | timing | {"model_rejected": why} | ({"model_sentence": answer} if answer else {})
    out = {"text": answer, "origin": llm.name, "basis": rules.get("basis", "geometry"), "regions": rules["regions"]}
    return out | timing
