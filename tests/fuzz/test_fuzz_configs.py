"""Settings from a --config file, LINESIDE_* variables and a --cameras file: Settings within their declared
bounds, or one ValueError line naming the setting (and where it came from); never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import options
from runtime.serve.cameras import read_cameras
from runtime.settings import Settings
from tests.fuzz.invariants import clear_error

pytestmark = pytest.mark.fuzz

NAMES = sorted(options.owner_of)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
TEXT = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["0", "-1", "1e309", "nan", "inf", "true", "off", "auto", "cuda,cpu", "", " ", "0x10", "1_000"]),
)


@given(st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)), JSON, max_size=4))
def test_a_config_file_is_settings_or_one_clear_line(tmp_path_factory, config):
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(config))
    try:
        settings = options.load(config_file=path, environ={})
    except ValueError as e:
        clear_error(e)
        return
    assert isinstance(settings, Settings)


@given(st.dictionaries(st.sampled_from(NAMES), TEXT, min_size=1, max_size=3))
def test_environment_variables_are_settings_or_one_clear_line(values):
    environ = {f"LINESIDE_{name.upper()}": value for name, value in values.items()}
    try:
        settings = options.load(environ=environ)
    except ValueError as e:
        clear_error(e)
        return
    assert isinstance(settings, Settings)


CAMERA_KEYS = st.sampled_from(["id", "source", "results", "threshold", "teach", "category", "sink", "x"])


@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda cams: "cameras:\n" + "".join(f"  - {json.dumps(c)}\n" for c in cams),
            st.lists(st.dictionaries(CAMERA_KEYS, JSON, max_size=4), max_size=3),
        ),
    )
)
def test_a_cameras_file_is_cameras_or_one_clear_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cameras") / "cameras.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        specs = read_cameras(path, Settings.of(source="0"))
    except ValueError as e:
        clear_error(e)
        return
    assert specs and all(isinstance(spec.settings, Settings) for spec in specs)


@pytest.mark.parametrize("text", ["\x1f", "cameras:\n  - {id: a, id: b}\n", "cameras: [\n"])
def test_a_cameras_file_yaml_refuses_is_refused_in_one_line(tmp_path, text):
    """Found by the fuzzer: YAML's own message spans lines ('...\\n  in "<unicode string>", position 0')."""
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="cameras file") as e:
        read_cameras(path, Settings.of(source="0"))
    clear_error(e.value)


def test_null_for_a_setting_that_needs_a_value_is_refused_in_one_line(tmp_path):
    """Found by the fuzzer: {"min_region_frac": null} reached the bounds check (TypeError: '<' not supported
    between instances of 'NoneType' and 'float')."""
    path = tmp_path / "config.json"
    path.write_text('{"min_region_frac": null}')
    with pytest.raises(ValueError, match="setting min_region_frac: null is not a valid float") as e:
        options.load(config_file=path, environ={})
    clear_error(e.value)
    path.write_text('{"references": null}')  # a setting that may be unset takes null
    assert options.load(config_file=path, environ={}).job.references is None
