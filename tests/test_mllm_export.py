"""export mllm: quantisation of an f32 GGUF, the packaged SmolLM2 kept as published."""

import json

import pytest

from export import mllm_export
from export.build import build_bundle
from export.mllm_export import MllmSpec, file_type
from runtime.bundle.loader import Bundle
from runtime.check import check
from runtime.prompts import language_model
from tests.tiny_gguf import build_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf")


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_f32_gguf_is_quantised_and_runs(tiny_gguf, tmp_path, quant):
    assert file_type(tiny_gguf) == "ALL_F32"
    build_bundle(tmp_path / "b", "custom", mllm=MllmSpec(gguf=tiny_gguf, quant=quant))
    bundle = Bundle.open(tmp_path / "b")
    mllm = bundle.by_role("language_model")
    entry = mllm.files[quant]
    assert file_type(bundle.file_path(entry)) == f"MOSTLY_{quant}"
    assert entry.bytes < tiny_gguf.stat().st_size / 2.5  # really smaller than f32
    assert mllm.source["how"].startswith("quantised from ALL_F32") and mllm.config["handler"] == "text"
    assert entry.parity["smoke"]["tokens_per_s"] > 0
    _, rows = check(tmp_path / "b", end_to_end=False)  # a language model alone cannot score a frame
    assert rows[0][0] == "mllm" and rows[0][4].endswith("tokens")


def test_packaged_smollm2_is_kept_as_published(tmp_path):
    build_bundle(tmp_path / "b", "custom", mllm=MllmSpec(packaged=True))
    mllm = Bundle.open(tmp_path / "b").by_role("language_model")
    assert mllm.name == "mllm" and list(mllm.files) == ["Q4_1"] and "kept as published" in mllm.source["how"]
    assert mllm.source["license"].startswith("Apache-2.0") and mllm.config["chat_format"] == "gguf-template"


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        build_bundle(tmp_path / "b", "custom", mllm=MllmSpec())
    with pytest.raises(ValueError, match="unknown chat handler 'llava-9'; choose from text, mtmd, llava-1-5"):
        build_bundle(tmp_path / "b", "custom", mllm=MllmSpec(packaged=True, handler="llava-9"))
    assert not (tmp_path / "b").exists()


def test_export_offers_exactly_the_handlers_the_runtime_can_load():
    """One list: export checks --handler against the runtime's, which maps each vision handler to its class."""
    assert mllm_export.HANDLERS is language_model.HANDLERS
    assert language_model.HANDLERS == (language_model.TEXT_HANDLER, *language_model.HANDLER_CLASSES)


def test_the_runtime_reads_the_chat_format_and_trained_context_from_the_manifest(tiny_gguf, tmp_path):
    build_bundle(tmp_path / "b", "custom", mllm=MllmSpec(gguf=tiny_gguf, quant="Q8_0"))
    config = Bundle.open(tmp_path / "b").by_role("language_model").config
    assert config == {"handler": "text", "vision": False, "n_ctx_train": 256, "chat_format": "gguf-template"}
    model = language_model.LanguageModel(Bundle.open(tmp_path / "b"), threads=1, n_ctx=2048)
    assert model.llm.n_ctx() == 256 and model.llm.chat_format != "chatml"  # capped; the file's own template
    path = tmp_path / "b" / "manifest.json"
    path.write_text(path.read_text().replace('"chat_format": "gguf-template"', '"chat_format": "chatml"'))
    assert language_model.LanguageModel(Bundle.open(tmp_path / "b"), threads=1).llm.chat_format == "chatml"
    assert json.loads(path.read_text())["components"]["mllm"]["role"] == "language_model"
