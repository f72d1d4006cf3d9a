"""Shared fixtures: one tiny bundle per test session, built by the real export code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.build import build_bundle
from export.profiles import PROFILES


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The tiny profile at fp32/fp16/int8; treat it as read-only (copy it to change it)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    profile = PROFILES["tiny"]
    build_bundle(out, "tiny", clip=profile.clip, sam=profile.sam)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
