"""pytest plugin of deploy/test-py310: the runtime's tests in an environment without torch (Python 3.10,
numpy 1.26, as on JetPack 6), run with `--noconftest -p pytest_py310`.

tests/conftest.py builds its bundles with the export code, which needs torch; here the same fixtures
(tiny_bundle, controlled, bundle_copy, line_schema and the result-line check) read bundles that the
main environment built with that code (LINESIDE_PY310_BUNDLES: tiny/ and controlled/). A test whose
module, helpers, body or fixtures import torch or the export code's torch side (export.build, ...) is
not a runtime test: it is skipped, saying which import. `export` is entered without its __init__
(which imports export.build, hence torch) so that its torch-free modules (export.writer, used by
tests/controlled.py) load as they are.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import shutil
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
TORCH_SIDE = ("torch", "torchvision", "open_clip", "segment_anything", "timm", "benchmarks")
TORCH_FREE_EXPORT = ("export.writer", "export.graph_files")  # export's modules that import no torch


# What the imports do not show: node id prefix -> why it is not a runtime test in this environment
NOT_HERE = {
    "tests/test_cli.py::test_every_benchmark_with_a_report_is_a_bench_subcommand": (
        "lineside bench loads benchmarks/, whose bench extra (scikit-learn, scipy) this environment lacks"
    ),
    "tests/test_gige.py": (
        "Aravis's GObject bindings: python3-gi is Debian's build for its own Python (3.11), none here for 3.10"
    ),
}


def _enter_export_without_init() -> None:
    spec = importlib.util.spec_from_loader("export", loader=None, is_package=True)
    module = importlib.util.module_from_spec(spec)
    module.__path__ = [str(ROOT / "export")]
    sys.modules.setdefault("export", module)


_enter_export_without_init()


def _torch_side(name: str) -> bool:
    root = name.split(".")[0]
    return root in TORCH_SIDE or (root == "export" and name not in TORCH_FREE_EXPORT)


def _imports(tree: ast.AST, top_level: bool) -> list[str]:
    nodes = tree.body if top_level else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@cache
def _module_needs(path: Path) -> str | None:
    """The torch-side import of a test module or one of the tests/ helpers it imports, if any."""
    for name in _imports(ast.parse(path.read_text()), top_level=True):
        if _torch_side(name):
            return name
        if name.startswith("tests.") and (helper := ROOT / (name.replace(".", "/") + ".py")).exists():
            if found := _module_needs(helper):
                return found
    return None


def _function_needs(function) -> str | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    return next((n for n in _imports(tree, top_level=False) if _torch_side(n)), None)


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return _module_needs(collection_path) is not None or None
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        functions = [getattr(item, "function", None)] + [d.func for ds in defs.values() for d in ds]
        needs = next((n for f in functions if f is not None and (n := _function_needs(f))), None)
        if needs:
            item.add_marker(pytest.mark.skip(reason=f"imports {needs} (export's side, needs torch)"))
        elif why := next((w for prefix, w in NOT_HERE.items() if item.nodeid.startswith(prefix)), None):
            item.add_marker(pytest.mark.skip(reason=why))


def _prebuilt(name: str) -> Path:
    folder = Path(os.environ.get("LINESIDE_PY310_BUNDLES", "")) / name
    if not (folder / "manifest.json").is_file():
        pytest.fail(f"no prebuilt {name} bundle in LINESIDE_PY310_BUNDLES ({folder}): run deploy/test-py310")
    return folder


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """The tiny profile at fp32/fp16/int8, as tests/conftest.py builds it; read-only."""
    return _prebuilt("tiny")


@pytest.fixture(scope="session")
def controlled() -> Path:
    """The hand-made bundle of tests/controlled.py; read-only."""
    return _prebuilt("controlled")


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def line_schema() -> Draft202012Validator:
    from runtime.detect.lines import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


_seen: dict[Path, tuple[int, int]] = {}  # *.jsonl already checked -> (size, mtime_ns) then


def _refuse(token: str):
    raise ValueError(f"{token} is not strict JSON")


@pytest.fixture(autouse=True)
def result_lines_follow_the_schema(tmp_path_factory, line_schema):
    """As in tests/conftest.py: every *.jsonl a test leaves is strict JSON, its result lines valid."""
    yield
    problems = []
    for path in sorted(tmp_path_factory.getbasetemp().rglob("*.jsonl")):
        try:
            stat = path.stat()
            if _seen.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        _seen[path] = (stat.st_size, stat.st_mtime_ns)
        for n, raw in enumerate(text.splitlines(), 1):
            try:
                line = json.loads(raw, parse_constant=_refuse)
            except ValueError as e:
                problems.append(f"{path}:{n}: not strict JSON: {e}")
                continue
            if isinstance(line, dict) and "label" in line:
                problems += [f"{path}:{n}: {error.message}" for error in line_schema.iter_errors(line)]
    if problems:
        pytest.fail("result lines that do not follow result-line.schema.json:\n" + "\n".join(problems[:20]))
