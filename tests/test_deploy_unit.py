"""Issue 29, item 4: the systemd unit as systemd reads it (deploy/verify-unit: systemd-analyze verify, and the
sandbox's exposure held at 2.0 or below), with the hardening a line box wants."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "lineside.service"


def _verify(unit: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed: apt-get install systemd (deploy/verify-unit installs it)")
    env = os.environ | {"LINESIDE_EXE": str(Path(sys.executable).parent / "lineside")}
    cmd = [str(ROOT / "deploy" / "verify-unit"), str(unit)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_the_unit_verifies_clean_and_its_exposure_is_low():
    done = _verify(UNIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verify {UNIT}: clean (systemd " in done.stdout, done.stdout
    assert "Overall exposure level" in done.stdout and " OK " in done.stdout, done.stdout


@pytest.mark.parametrize(
    "change, said",
    [
        (("Type=notify", "Type=notifyy"), "Failed to parse service type"),
        (("WatchdogSec=30", "WatchdogSecs=30"), "Unknown key 'WatchdogSecs'"),
        (("ProtectSystem=strict\nProtectHome=true", "ProtectSystem=false\nProtectHome=false"), "exposure above 2.0"),
    ],
    ids=["bad value", "unknown key", "sandbox opened"],
)
def test_a_damaged_unit_is_refused_naming_the_line(tmp_path, change, said):
    text = UNIT.read_text()
    assert change[0] in text
    damaged = tmp_path / "lineside.service"
    damaged.write_text(text.replace(change[0], change[1]))
    done = _verify(damaged)
    assert done.returncode == 1 and said in done.stderr, done.stdout + done.stderr


def test_the_unit_has_the_hardening_of_a_line_box():
    keys = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    wanted = {
        "Type": "notify",  # READY=1 from serve (runtime/serve/process/notify.py)
        "User": "lineside",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/lineside",
        "StateDirectory": "lineside",
        "Restart": "on-failure",
        "LimitNOFILE": "8192",
        "NoNewPrivileges": "true",
        "CapabilityBoundingSet": "",
    }
    for key, value in wanted.items():
        assert keys.get(key) == [value], f"{key}={keys.get(key)}, wanted {value}"
    stall = next(f.default for f in dataclasses.fields(ServeSettings) if f.name == "health_stall_s")
    watchdog = int(keys["WatchdogSec"][0])
    assert 0 < watchdog <= stall, "a stalled line should be restarted within about a stall bound"
    env = (ROOT / "deploy" / "lineside.env").read_text()
    assert "LINESIDE_RESULTS=/var/lib/lineside/" in env  # inside ReadWritePaths: the only writable place
