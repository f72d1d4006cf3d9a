"""The prompt agent: the anti-false-alarm filter on controlled embeddings, malformed
answers, and the real SmolLM2-135M-Instruct end to end on the text-only path."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.build import build_bundle
from export.mllm_export import MllmSpec
from runtime.detect.detector import Detector
from runtime.detect.prompt_bank import PromptBank
from runtime.prompts.agent import EXAMPLE, GENERIC_DEFECTS, SYSTEM, PromptAgent, to_prompt, valid_descriptions
from runtime.prompts.checks import check_descriptions
from runtime.prompts.evidence import heuristic_descriptions
from runtime.prompts.false_alarms import Candidate, filter_candidates
from runtime.prompts.language_model import HANDLER_CLASSES, LanguageModel, handler_class, image_part, vision_message
from runtime.settings import AgentSettings
from tests.controlled import CATEGORY, part


@pytest.fixture(scope="module")
def controlled_detector(controlled, tmp_path_factory):
    return Detector.from_bundle(controlled, text_cache_dir=tmp_path_factory.mktemp("text"))


def _cand(kind, look, where="top"):
    d = {"type": kind, "location": where, "appearance": look}
    return Candidate(to_prompt(CATEGORY, d), d, [0])


def test_filter_keeps_the_real_defect_and_drops_each_false_alarm_for_its_reason(controlled_detector):
    candidates = [
        _cand("scratch", "long"),
        _cand("scratch", "long", "rim"),
        _cand("grainy", "coarse"),
        _cand("finish", "perfect"),
        _cand("stain", "brown"),
    ]
    kept, dropped = filter_candidates(
        controlled_detector, CATEGORY, candidates, [part(), part(size=200)], ["matte stain pattern"], AgentSettings()
    )
    assert [c.text for c in kept] == ["a photo of a widget with a long scratch on its top"]
    reasons = {c.description["type"] + "/" + c.description["location"]: c.reason for c in dropped}
    assert reasons["scratch/rim"].startswith("merged into")
    assert reasons["grainy/top"].startswith("fires on normal references")
    assert reasons["finish/top"].startswith("nearer the normal prompts")
    assert reasons["stain/top"].startswith("restates a normal feature the model named: stain")
    assert kept[0].merged == ["a photo of a widget with a long scratch on its rim"]
    assert kept[0].checks["cos_abnormal"] > kept[0].checks["cos_normal"]


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("not json at all", "not JSON"),
        ('{"normal_features": []}', "no defects list"),
        (
            '{"defects": [{"type": "type", "location": "type", "appearance": "type"}], "normal_features": []}',
            "placeholder",
        ),
        (
            '{"defects": [{"type": "crack", "location": "crack", "appearance": "crack"}], "normal_features": []}',
            "placeholder",
        ),
        ('{"defects": [], "normal_features": []}', "placeholder"),
    ],
)
def test_malformed_answers_are_rejected_with_a_reason(answer, reason):
    good, _, why = valid_descriptions(answer)
    assert good == [] and reason in why


def test_good_answer_keeps_distinct_descriptions():
    answer = json.dumps(
        {
            "defects": [{"type": "Crack", "location": "neck", "appearance": "thin dark"}] * 2
            + [{"type": "dent", "location": "side", "appearance": "shallow"}],
            "normal_features": ["Smooth"],
        }
    )
    good, normals, why = valid_descriptions(answer)
    assert [d["type"] for d in good] == ["crack", "dent"] and normals == ["smooth"] and why == ""


def test_vision_path_without_weights_builds_messages_and_finds_handlers():
    frame = np.zeros((600, 900, 3), np.uint8)
    frame[:, :450] = (255, 0, 0)
    msg = vision_message("What differs?", [("Normal part:", frame), ("Inspected part:", frame)])
    parts = msg["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    import base64

    import cv2

    png = base64.b64decode(image_part(frame)["image_url"]["url"].split(",", 1)[1])
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert decoded.shape == (299, 448, 3) and tuple(decoded[10, 10]) == (255, 0, 0)  # RGB kept, downscaled
    for name in HANDLER_CLASSES:
        assert handler_class(name).__name__ == HANDLER_CLASSES[name]
    with pytest.raises(ValueError, match="unknown vision chat handler"):
        handler_class("llava-99")


@pytest.fixture(scope="module")
def smol_bundle(tiny_bundle, tmp_path_factory):
    import shutil

    out = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("smol") / "b"))
    build_bundle(out, "tiny", mllm=MllmSpec(packaged=True))
    return out


def _images():
    rng = np.random.default_rng(3)
    normals = [np.clip(rng.normal(128, 6, (120, 160, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    sample = normals[0].copy()
    sample[50:56, 20:140] = 20
    return normals, [sample]


def test_smollm2_builds_a_bank_repeatably(smol_bundle, tmp_path):
    detector = Detector.from_bundle(smol_bundle, text_cache_dir=tmp_path / "text")
    llm = LanguageModel(detector.bundle, threads=2)
    settings = AgentSettings(retries=2, max_tokens=120)
    normals, samples = _images()
    names = {"normal_names": ["a.png", "b.png"], "sample_names": ["bad.png"]}
    banks = [PromptAgent(detector, llm, settings).build_bank("screw", normals, samples, **names) for _ in range(2)]
    assert [n["file"] for n in banks[0].meta["normal_images"]] == ["a.png", "b.png"]
    assert banks[0].meta["stage1"][0]["sample"]["file"] == "bad.png"
    first, second = ([(p.text, p.kept, p.reason) for p in b.prompts] for b in banks)
    assert first == second and first  # same seed, same bank
    record = banks[0].meta["stage1"][0]
    assert record["attempts"] and all(a["stats"]["tokens"] > 0 for a in record["attempts"])
    _assert_origin_follows_the_attempts(record, settings.retries)
    assert banks[0].meta["model"]["file"].startswith("SmolLM2-135M-Instruct")
    for attempt in record["attempts"]:  # whatever the model said, no accepted answer copies the example
        good, normals, _ = valid_descriptions(attempt["answer"])
        if good and check_descriptions(good, normals, EXAMPLE, "screw", [e["position"] for e in record["evidence"]]):
            assert attempt["rejected"]
    path = banks[0].write(tmp_path / "screw.json")
    assert PromptBank.read(path) == PromptBank.read(banks[0].write(tmp_path / "again.json"))


def _assert_origin_follows_the_attempts(record: dict, retries: int) -> None:
    """A stage-1 record's origin is the one its attempts and evidence call for, and its descriptions
    come from there: the accepted answer (which ends the attempts), else the rules, else the vocabulary."""
    attempts = record["attempts"]
    accepted = [i for i, a in enumerate(attempts) if a["rejected"] is None]
    if accepted:
        assert accepted == [len(attempts) - 1], "the first usable answer ends the attempts"
        good, normals, _ = valid_descriptions(attempts[-1]["answer"])
        assert record["origin"] == "model" and "fallback_reason" not in record
        assert record["descriptions"] == good and record["normal_features"] == normals
    else:
        assert len(attempts) == retries and all(a["rejected"] for a in attempts)
        assert record["fallback_reason"] == f"no usable answer in {retries} attempts"
        if record["evidence"]:
            assert record["origin"] == "rules on the evidence"
            assert record["descriptions"] == heuristic_descriptions(record["evidence"])
        else:
            assert record["origin"] == "generic defect vocabulary" and record["descriptions"] == GENERIC_DEFECTS


def test_explain_is_cut_at_its_deadline_and_falls_back_to_rules(smol_bundle, tmp_path):
    """The deadline is checked between streamed tokens: a deadline already passed stops
    the answer at its first token, and the cut answer leaves the rule explanation standing.
    (No wall-clock bound is asserted: the machine is shared and noisy.)"""
    detector = Detector.from_bundle(
        smol_bundle, text_cache_dir=tmp_path / "text", sam_gate=0.0, region_threshold=0.0, max_region_frac=1.0
    )
    normals, samples = _images()
    result = detector.detect(samples[0], "screw", normals, colour="RGB")
    assert result.label == "NG"
    llm = LanguageModel(detector.bundle, threads=2)
    answer, stats = llm.chat([{"role": "user", "content": "Describe a screw."}], max_tokens=60, deadline_s=0.0)
    assert stats["finish_reason"] == "deadline" and stats["tokens"] <= 1
    uncut, stats = llm.chat([{"role": "user", "content": "Describe a screw."}], max_tokens=8)
    assert stats["finish_reason"] != "deadline" and stats["tokens"] > 1
    rules = PromptAgent(detector, None).explain(result)
    assert (
        rules == result.to_dict()["explanation"] and rules["origin"] == "rules" and rules["text"].startswith("NG screw")
    )
    cut = PromptAgent(detector, llm).explain(result, deadline_s=0.0)
    assert cut["model_rejected"] == "not finished within 0.0 s" and cut["text"] == rules["text"]
    assert cut["origin"] == "rules" and cut["latency_s"] >= 0


def test_an_answer_copying_the_system_prompts_example_is_refused():
    """SmolLM2 once answered for a screw with the bottle example word for word; such an answer,
    or one naming the example's bottle features, is refused (and retried) with the reason."""
    copied = json.loads(SYSTEM[SYSTEM.index("{") :])
    good, normals, _ = valid_descriptions(json.dumps(copied))
    assert good and "copies the example's location 'neck'" == check_descriptions(good, normals, EXAMPLE, "screw", [])
    rim = [{"type": "dent", "location": "rim", "appearance": "shallow"}]
    assert "names rim, which the example has" in check_descriptions(rim, [], EXAMPLE, "screw", [])
    assert "copies the example's normal feature" in check_descriptions(
        [{"type": "scratch", "location": "head", "appearance": "bright"}], ["smooth glass"], EXAMPLE, "screw", []
    )
    elsewhere = [{"type": "scratch", "location": "lower right", "appearance": "bright"}]
    assert "where the evidence shows none" in check_descriptions(elsewhere, [], EXAMPLE, "screw", ["upper left"])
    fine = [{"type": "scratch", "location": "upper left", "appearance": "thin bright"}]
    assert check_descriptions(fine, ["shiny thread"], EXAMPLE, "screw", ["upper left"]) == ""
    assert check_descriptions(rim, [], EXAMPLE, "bottle rim", []) == ""  # a part that has a rim may name it


def test_no_difference_is_asserted_where_the_detector_found_none(smol_bundle, tmp_path):
    detector = Detector.from_bundle(smol_bundle, text_cache_dir=tmp_path / "text")
    normals, _ = _images()
    agent = PromptAgent(detector, None)
    record = agent.articulate("screw", normals, normals[1], "good.png")
    assert (
        record["evidence"] == []
        and "differs" not in record["question"]
        and "What defects are these" not in record["question"]
    )
    assert record["sample"] == {"file": "good.png", "sha256": record["sample"]["sha256"]}


def test_prompts_command_names_its_images_by_file_and_hash(smol_bundle, tmp_path):
    from runtime.prompts.__main__ import main as prompts_main

    normals, samples = _images()
    for folder, images in (("normal", normals), ("samples", samples)):
        (tmp_path / folder).mkdir()
        for i, rgb in enumerate(images):
            cv2.imwrite(str(tmp_path / folder / f"{folder}-{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "screw.json"
    argv = ["--bundle", str(smol_bundle), "--category", "screw", "--normal", str(tmp_path / "normal")]
    argv += ["--samples", str(tmp_path / "samples"), "--retries", "1", "--max-tokens", "60", "--out", str(out)]
    assert prompts_main([*argv, "--text-cache-dir", str(tmp_path / "text")]) == 0
    meta = PromptBank.read(out).meta
    assert [n["file"] for n in meta["normal_images"]] == ["normal-0.png", "normal-1.png"]
    assert all(len(n["sha256"]) == 16 for n in meta["normal_images"])
    assert meta["stage1"][0]["sample"]["file"] == "samples-0.png"
