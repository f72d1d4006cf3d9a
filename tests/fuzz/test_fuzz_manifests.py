"""A tiny bundle's manifest.json mutated (a leaf replaced, a key dropped or added, the text cut): Bundle.open
loads it or refuses with one clear line; never another exception."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.bundle.loader import Bundle
from tests.fuzz.invariants import CLEAR, clear_error

pytestmark = pytest.mark.fuzz

LEAF = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8) | st.just([])


@pytest.fixture(scope="module")
def damaged(tiny_bundle, tmp_path_factory):
    folder = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("fuzzed") / "bundle")
    return folder, json.loads((tiny_bundle / "manifest.json").read_text())


def _paths(node, at=()):
    yield at
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, (*at, key))


@given(st.data())
def test_a_mutated_manifest_loads_or_is_refused_in_one_line(damaged, data):
    folder, manifest = damaged
    manifest = json.loads(json.dumps(manifest))
    paths = [p for p in _paths(manifest) if p]
    at = data.draw(st.sampled_from(paths))
    parent = manifest
    for key in at[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "replace":
        parent[at[-1]] = data.draw(LEAF)
    elif action == "drop":
        del parent[at[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(LEAF)
    text = json.dumps(manifest)
    if data.draw(st.integers(0, 9)) == 0:
        text = text[: data.draw(st.integers(0, len(text)))]
    (folder / "manifest.json").write_text(text)
    try:
        Bundle.open(folder, verify_hashes=False)
    except CLEAR as e:
        clear_error(e)


@pytest.mark.parametrize("key", ["branches", "taps"])
def test_a_list_where_the_image_config_wants_a_name_is_refused_naming_the_field(damaged, key):
    """Found by the 1,000-case run: `[]` as a branch or a tap's output raised TypeError (unhashable list)."""
    folder, manifest = damaged
    manifest = json.loads(json.dumps(manifest))
    image = next(c for c in manifest["components"].values() if "taps" in c.get("config", {}))
    if key == "branches":
        image["config"]["branches"][0] = []
    else:
        image["config"]["taps"][0]["output"] = []
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CLEAR) as refused:
        Bundle.open(folder, verify_hashes=False)
    clear_error(refused.value)
    assert f"config.{key}" in str(refused.value)
