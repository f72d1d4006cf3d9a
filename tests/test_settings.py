"""One settings source: every setting reachable from every command, --config and LINESIDE_*."""

import dataclasses
import json

import pytest

from runtime.detect.__main__ import parser as detect_parser
from runtime.options import load
from runtime.prompts.__main__ import parser as prompts_parser
from runtime.serve.__main__ import parser as serve_parser
from runtime.settings import SECTIONS, DetectorSettings, Settings

COMMANDS = {  # command -> (its parser, the sections it reads)
    "serve": (serve_parser, ("job", "detector", "agent", "serve")),
    "detect": (lambda: detect_parser(), ("job", "detector")),
    "prompts": (prompts_parser, ("job", "detector", "agent")),
}
REQUIRED = {"serve": [], "detect": ["x.png", "--out", "o"], "prompts": ["--normal", "n"]}


def _flags(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_of_a_commands_sections_is_a_flag(command):
    make, sections = COMMANDS[command]
    flags = _flags(make())
    for section in sections:
        for f in dataclasses.fields(SECTIONS[section]):
            assert "--" + f.name.replace("_", "-") in flags, (command, f.name)
    assert "--config" in flags


def test_the_detector_is_configured_the_same_way_by_every_command():
    """The sections shared by the commands are one declaration: the same flag gives the same value."""
    for command, (make, _) in COMMANDS.items():
        args = make().parse_args([*REQUIRED[command], "--threshold", "0.7", "--trt-cache-dir", "/tmp/engines"])
        settings = load(args, environ={})
        assert settings.detector.threshold == 0.7 and str(settings.detector.trt_cache_dir) == "/tmp/engines"


def test_precedence_defaults_config_environment_flags(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"threshold": 0.2, "map_weight": 0.3, "port": 9000, "category": "nut"}))
    args = serve_parser().parse_args(["--config", str(config), "--map-weight", "0.9"])
    settings = load(args, environ={"LINESIDE_THRESHOLD": "0.4", "LINESIDE_USE_SAM": "false", "LINESIDE_SINK": "a,b"})
    assert settings.detector.threshold == 0.4  # environment over the config file
    assert settings.detector.map_weight == 0.9  # the command line over both
    assert settings.serve.port == 9000 and settings.job.category == "nut"  # config over defaults
    assert settings.detector.use_sam is False and settings.serve.sink == ("a", "b")
    assert settings.agent == Settings().agent  # untouched sections keep their defaults


@pytest.mark.parametrize(
    "source, message",
    [
        ({"LINESIDE_PORT": "eighty"}, "setting port: 'eighty' is not a valid int (from environment variable"),
        ({"LINESIDE_THRESHOLD": "nan"}, "setting threshold: nan is not a finite number"),
        ({"LINESIDE_THREADS": "0"}, "setting threads: 0 must be >= 1"),
        ({"LINESIDE_PROVIDERS": "gpu"}, "setting providers: 'gpu' is not one of tensorrt, cuda, cpu"),
        ({"LINESIDE_CATEGORY": " "}, "setting category: ' ' is empty"),
        ({"LINESIDE_INPUT_BITS": "11"}, "setting input_bits: 11 is not one of 10, 12, 14, 16"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_setting(source, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        load(environ=source)


def test_config_files_are_checked_whole(tmp_path):
    bad = tmp_path / "c.json"
    for text, message in [
        ("[1, 2]", "must be one JSON object"),
        ('{"treshold": 1}', "unknown settings"),
        ('{"port": Infinity}', "setting port"),
        ("{", "config file"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load(config_file=bad, environ={})


def test_settings_are_values_not_state():
    base = DetectorSettings()
    changed = Settings().replace(threshold=0.9)
    assert base.threshold == 0.5 and changed.detector.threshold == 0.9
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.threshold = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown settings"):
        Settings.of(treshold=0.2)
