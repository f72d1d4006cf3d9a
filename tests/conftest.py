"""Shared fixtures: one tiny bundle per test session, built by the real export code, and
every result line the tests produce checked against the result-line JSON Schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from export.build import build_bundle
from export.profiles import PROFILES
from runtime.detect.lines import SCHEMA_FILE


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The tiny profile at fp32/fp16/int8; treat it as read-only (copy it to change it)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    profile = PROFILES["tiny"]
    build_bundle(out, "tiny", clip=profile.clip, sam=profile.sam)
    return out


@pytest.fixture(scope="session")
def controlled(tmp_path_factory) -> Path:
    """The hand-made bundle whose right answers are known (tests/controlled.py); read-only."""
    import open_clip

    from tests.controlled import build_controlled_bundle

    return build_controlled_bundle(
        tmp_path_factory.mktemp("controlled") / "bundle", Path(open_clip.tokenizer.default_bpe())
    )


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def line_schema() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


_seen: dict[Path, tuple[int, int]] = {}  # *.jsonl already validated -> (size, mtime_ns) then


@pytest.fixture(autouse=True)
def result_lines_follow_the_schema(tmp_path_factory, line_schema):
    """After each test, every new or changed *.jsonl under this session's temporary folders
    (tmp_path, and module or session fixtures' folders) has only valid result lines: a line
    with a "label" is checked against result-line.schema.json, and every line is strict JSON."""
    yield
    problems = []
    for path in sorted(tmp_path_factory.getbasetemp().rglob("*.jsonl")):
        try:
            stat = path.stat()
            if not path.is_file() or _seen.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue  # gone or unreadable meanwhile: nothing the runtime wrote there to judge
        _seen[path] = (stat.st_size, stat.st_mtime_ns)
        problems += [f"{path}:{n}: {why}" for n, why in _line_problems(text, line_schema)]
    if problems:
        pytest.fail("result lines that do not follow result-line.schema.json:\n" + "\n".join(problems[:20]))


def _line_problems(text: str, schema: Draft202012Validator):
    """(line number, what is wrong) for each bad line of a JSONL text."""
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            line = json.loads(raw, parse_constant=_not_strict)
        except ValueError as e:
            yield n, f"not strict JSON: {e}"
            continue
        if isinstance(line, dict) and "label" in line:
            for error in schema.iter_errors(line):
                yield n, f"{'/'.join(map(str, error.absolute_path)) or '(line)'}: {error.message}"


def _not_strict(token: str):
    raise ValueError(f"{token} is not strict JSON")
