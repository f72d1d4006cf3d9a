"""The `lineside` command runs the same code as the python -m commands."""

import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from lineside.cli import main


def test_the_console_script_is_installed_and_points_at_the_cli():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "lineside"]
    assert script.value == "lineside.cli:main"
    assert shutil.which("lineside", path=str(Path(sys.executable).parent)) is not None


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("serve", "detect", "check", "prompts", "export", "bench"))


def test_serve_help_lists_the_settings_from_their_one_source(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--trt-cache-dir" in out and "--sam-gate" in out and "--llm-threads" in out


def test_check_through_the_command_equals_python_m(tiny_bundle):
    run = lambda *cmd: subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=300)  # noqa: E731
    allow = ("--allow", "fp16", "--allow", "int8")  # random-weight variants hold or not by CPU
    direct = run("-m", "runtime.check", str(tiny_bundle), *allow)
    via = run("-m", "lineside", "check", str(tiny_bundle), *allow)
    assert direct.returncode == via.returncode == 0, via.stderr
    assert via.stdout.splitlines()[-1] == direct.stdout.splitlines()[-1]


def test_unknown_subcommands_are_refused_with_the_list(capsys):
    assert main(["inspect"]) == 2 and "unknown subcommand 'inspect'" in capsys.readouterr().err
    assert main(["bench", "nope"]) == 2


@pytest.mark.parametrize("name", ["neighbours", "cameras", "explanations"])
def test_every_benchmark_with_a_report_is_a_bench_subcommand(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", name, "--help"])
    assert done.value.code == 0
    assert f"python -m benchmarks.{name}" in capsys.readouterr().out
