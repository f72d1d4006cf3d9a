"""Accelerators never fail silently: a requested provider that is not obtained is named, or refused."""

import logging

import pytest

from runtime.bundle.sessions import ProviderError
from runtime.detect.detector import Detector


def test_missing_cuda_is_named_per_graph(tiny_bundle, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lineside.session"):
        detector = Detector.from_bundle(tiny_bundle, providers=("cuda", "cpu"), text_cache_dir=tmp_path)
    assert detector.providers == ("CPUExecutionProvider",)
    warned = [r.getMessage() for r in caplog.records if "cuda requested but not obtained" in r.getMessage()]
    assert any("clip_image" in m for m in warned) and any("onnxruntime" in m for m in warned)


def test_strict_providers_refuses_to_run_on_the_cpu_instead(tiny_bundle, tmp_path):
    with pytest.raises(ProviderError, match="cuda requested but not obtained.*strict_providers"):
        Detector.from_bundle(tiny_bundle, providers=("cuda", "cpu"), strict_providers=True, text_cache_dir=tmp_path)
