"""The prompt agent: articulate -> refine -> anti-false-alarm, and short explanations.

1. Articulate: the language model says how a test part differs from a normal
   one (a vision model sees both images; a text-only model reads the detector's
   evidence), as JSON constrained by a schema. Unusable answers are retried
   with a new seed, then replaced by rule-based descriptions, and the reason is
   recorded.
2. Refine: descriptions become short CLIP prompts (<= 77 tokens), near
   duplicates merged by text-embedding similarity, the count capped.
3. Anti-false-alarm: candidates are dropped when they restate a normal feature
   the model named, when their embedding sits nearer the normal prompts than the
   abnormal ones, or when they fire on the normal references.
Every step lands in the bank's provenance; the generic prompts always stay (the
detector uses them whatever the bank says).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from ..detect.detector import Detector
from ..detect.explanation import geometric_explanation
from ..detect.prompt_bank import BankPrompt, PromptBank, category_text
from ..detect.result import Result
from ..settings import AgentSettings
from .checks import check_descriptions
from .evidence import evidence_text, heuristic_descriptions, region_evidence
from .explain import model_sentence
from .false_alarms import Candidate, filter_candidates
from .language_model import LanguageModel, vision_message

log = logging.getLogger("lineside.agent")

WORD = {"type": "string", "minLength": 3, "maxLength": 24, "pattern": "^[a-zA-Z][a-zA-Z -]*$"}
SCHEMA = {
    "type": "object",
    "properties": {
        "defects": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"type": WORD, "location": WORD, "appearance": WORD},
                "required": ["type", "location", "appearance"],
            },
        },
        "normal_features": {"type": "array", "maxItems": 3, "items": WORD},
    },
    "required": ["defects", "normal_features"],
}
PLACEHOLDERS = {"defect", "defects", "anomaly", "unknown", "none", "type", "location", "appearance", "string", "n a"}
EXAMPLE = {  # the system prompt's example answer: about another part, so an answer repeating it is refused
    "object": "bottle",
    "defects": [{"type": "crack", "location": "neck", "appearance": "thin dark"}],
    "normal_features": ["smooth glass", "round rim"],
}
SYSTEM = (
    "You are an inspector on a production line. You compare a part with a normal one and name visible "
    "defects precisely: type (scratch, crack, dent, stain, hole, ...), location on the part, appearance. "
    f"Example answer for a {EXAMPLE['object']}: " + json.dumps({k: v for k, v in EXAMPLE.items() if k != "object"})
)
GENERIC_DEFECTS = [  # the last resort when neither the model nor the evidence gives anything
    {"type": "scratch", "location": "surface", "appearance": "thin bright"},
    {"type": "crack", "location": "surface", "appearance": "thin dark"},
    {"type": "dent", "location": "surface", "appearance": "shallow"},
    {"type": "stain", "location": "surface", "appearance": "discoloured"},
]


def image_hash(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).data).hexdigest()[:16]


def valid_descriptions(answer: str) -> tuple[list[dict], list[str], str]:
    """(usable descriptions, normal features, reason if none are usable)."""
    try:
        data = json.loads(answer)
    except json.JSONDecodeError as e:
        return [], [], f"not JSON ({e.msg})"
    if not isinstance(data, dict) or not isinstance(data.get("defects"), list):
        return [], [], "no defects list"
    seen, good = set(), []
    for d in data["defects"]:
        if not isinstance(d, dict):
            continue
        fields = [str(d.get(k, "")).strip().lower() for k in ("type", "location", "appearance")]
        if any(f in PLACEHOLDERS or len(f) < 3 for f in fields) or len(set(fields)) < 3 or tuple(fields) in seen:
            continue  # placeholders, one word repeated, duplicates: a model filling the schema, not answering
        seen.add(tuple(fields))
        good.append(dict(zip(("type", "location", "appearance"), fields)))
    normals = [str(f).strip().lower() for f in data.get("normal_features", []) if isinstance(f, str)]
    return good, normals, "" if good else "only placeholder or repeated fields"


def to_prompt(category: str, d: dict) -> str:
    obj = category_text(category)
    location = d["location"] if d["location"].startswith(("on ", "at ", "in ", "near ")) else f"on its {d['location']}"
    return f"a photo of a {obj} with a {d['appearance']} {d['type']} {location}"


class PromptAgent:
    """Builds a category's prompt bank; `explain` puts an NG result into words."""

    def __init__(self, detector: Detector, llm: LanguageModel | None, settings: AgentSettings | None = None):
        self.detector, self.llm, self.settings = detector, llm, settings or AgentSettings()

    # --- stage 1 ------------------------------------------------------------------
    def _ask(self, messages: list[dict], attempt_log: list[dict], check) -> tuple[list[dict], list[str]]:
        """The first answer that is valid JSON and passes `check(descriptions, normals)` ("" or why not)."""
        s = self.settings
        for attempt in range(s.retries):
            answer, stats = self.llm.chat(
                messages, SCHEMA, s.max_tokens, s.seed + attempt, s.temperature, s.answer_seconds
            )
            good, normals, reason = valid_descriptions(answer)
            if good:
                reason = check(good, normals)
                good = [] if reason else good
            if stats["finish_reason"] != "stop" and not good:
                reason = f"cut off ({stats['finish_reason']}) without a usable answer"
            attempt_log.append({"seed": s.seed + attempt, "answer": answer, "stats": stats, "rejected": reason or None})
            if reason:
                log.info("answer refused (%s): %s", reason, answer[:200])
            if good:
                return good, normals
        return [], []

    def articulate(
        self, category: str, normals: list[np.ndarray], sample: np.ndarray | None, sample_name: str = ""
    ) -> dict:
        """One stage-1 record: the question, every attempt, the descriptions used and their origin."""
        record: dict = {"sample": image_ref(sample, sample_name) if sample is not None else None, "attempts": []}
        evidence, found = [], False
        if sample is not None:
            result = self.detector.detect(sample, category, normals if normals else None, colour="RGB")
            found = result.label == "NG" and bool(result.regions)  # a difference is asserted only where one was found
            evidence = region_evidence(result, sample, normals[0] if normals else None) if found else []
        obj = category_text(category)
        if sample is None or not found and not (self.llm is not None and self.llm.vision):
            question = f"List up to three defects that a {obj} on a production line can have, and its normal features."
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        elif self.llm is not None and self.llm.vision:
            question = f"Does the second {obj} differ from the normal first one, and how? Answer in JSON."
            messages = [
                {"role": "system", "content": SYSTEM},
                vision_message(question, [("Normal part:", normals[0]), ("Inspected part:", sample)]),
            ]
        else:
            question = evidence_text(obj, evidence) + "\nWhat defects are these? Answer in JSON."
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        record |= {
            "question": question,
            "evidence": evidence,
            "mode": "vision" if self.llm and self.llm.vision else "text",
        }
        places = [e["position"] for e in evidence]
        check = lambda d, n: check_descriptions(d, n, EXAMPLE, obj, places)  # noqa: E731
        descriptions, normal_features = self._ask(messages, record["attempts"], check) if self.llm else ([], [])
        if descriptions:
            record |= {"descriptions": descriptions, "normal_features": normal_features, "origin": "model"}
        else:
            fallback = heuristic_descriptions(evidence) or GENERIC_DEFECTS
            why = (
                "no language model in the bundle"
                if self.llm is None
                else f"no usable answer in {self.settings.retries} attempts"
            )
            origin = "rules on the evidence" if evidence else "generic defect vocabulary"
            record |= {"descriptions": fallback, "normal_features": [], "origin": origin, "fallback_reason": why}
        return record

    # --- stages 2 and 3 -------------------------------------------------------------
    def refine(self, category: str, records: list[dict]) -> list[Candidate]:
        """Descriptions -> prompts of at most 77 tokens, exact duplicates merged."""
        tokenizer = self.detector.text.encoder.tokenizer
        out: dict[str, Candidate] = {}
        for index, record in enumerate(records):
            for d in record["descriptions"]:
                text = to_prompt(category, d)
                if len(tokenizer.encode(text)) > tokenizer.context_length - 2:
                    continue  # would be cut: a prompt CLIP cannot read whole
                if text in out:
                    out[text].sources.append(index)
                else:
                    out[text] = Candidate(text, d, [index])
        return list(out.values())

    def build_bank(
        self,
        category: str,
        normals: list[np.ndarray],
        samples: list[np.ndarray] | None = None,
        progress: Callable[[str], None] = lambda _: None,
        normal_names: list[str] | None = None,
        sample_names: list[str] | None = None,
    ) -> PromptBank:
        """`normal_names` / `sample_names`: the images' file names, for the provenance (else only hashes)."""
        if not self.detector.has_language:
            raise ValueError("the prompt agent needs a bundle with CLIP (clip_image + clip_text) to embed prompts")
        if not normals:
            raise ValueError("the prompt agent needs at least one normal reference image")
        started = time.perf_counter()
        records = []
        names = list(sample_names or []) + [""] * len(samples or [])
        for i, sample in enumerate(samples or [None]):
            t = time.perf_counter()
            records.append(self.articulate(category, normals, sample, names[i] if sample is not None else ""))
            tokens = sum(a["stats"]["tokens"] for a in records[-1]["attempts"])
            progress(
                f"articulate {i + 1}/{len(samples or [None])}: {records[-1]['origin']}, "
                f"{tokens} tokens in {time.perf_counter() - t:.1f}s"
            )
        t = time.perf_counter()
        candidates = self.refine(category, records)
        normal_features = sorted({f for r in records for f in r["normal_features"]})
        kept, dropped = filter_candidates(self.detector, category, candidates, normals, normal_features, self.settings)
        progress(f"refine + filter: {len(candidates)} candidates, {len(kept)} kept in {time.perf_counter() - t:.1f}s")
        prompts = tuple(BankPrompt(c.text, True, c.reason, c.provenance()) for c in kept) + tuple(
            BankPrompt(c.text, False, c.reason, c.provenance()) for c in dropped
        )
        normal_names = list(normal_names or []) + [""] * len(normals)
        meta = {
            "model": {"file": self.llm.name, "sha256": self.llm.sha256, "quant": self.llm.quant} if self.llm else None,
            "bundle_id": self.detector.bundle_id,
            "settings": asdict(self.settings),
            "normal_images": [image_ref(n, name) for n, name in zip(normals, normal_names)],
            "stage1": records,
            "normal_features": normal_features,
            "generic_prompts": "always used by the detector; not listed here",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        return PromptBank(category, prompts, meta)

    # --- explanations -------------------------------------------------------------------
    def explain(
        self, result: Result, image: np.ndarray | None = None, reference: np.ndarray | None = None, deadline_s=10.0
    ) -> dict:
        """The final explanation of an NG result: the model's sentence when it passes the checks
        (origin: the model's file name), else the rule explanation the result carries (origin rules)."""
        rules = result.to_dict().get("explanation") or geometric_explanation(result)
        if self.llm is None:
            return rules
        return model_sentence(self.llm, rules, result.category, self.settings, deadline_s)


def image_ref(rgb: np.ndarray, name: str = "") -> dict:
    """How the provenance names an image: its file name (when known) and a hash of its pixels."""
    return {"file": name, "sha256": image_hash(rgb)} if name else {"sha256": image_hash(rgb)}
