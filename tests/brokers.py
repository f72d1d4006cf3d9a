"""Real mosquitto brokers for the MQTT tests: plain on loopback, or with TLS (a CA made here) and a password
file, the way a plant runs one. Shared by the sink's tests (test_mqtt_plant.py) and the trigger topic's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

USER, PASSWORD = "line-7", "s3cret:with@odd/chars"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path, server_names: str = "IP:127.0.0.1,DNS:localhost") -> Path:
    """A self-signed CA, a server certificate for `server_names` (subjectAltName: 127.0.0.1 and localhost)
    and a client certificate, all signed by it."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca", cwd=folder
    )
    for name, extra in (
        ("server", f"subjectAltName={server_names}"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        (folder / f"{name}.ext").write_text(extra + "\n")
        sign = ("-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext")
        _openssl("x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.crt", cwd=folder)
    return folder


class Broker:
    """mosquitto on a port of its own, started and killed at will. With `pki`: TLS (client certificate
    required), a password file holding USER, no anonymous clients, and sessions saved at every change (a
    timed autosave can miss a subscription made a second before SIGKILL; then its messages have nobody to
    go to). Without: anonymous, plain, sessions persisted."""

    def __init__(self, folder: Path, pki: Path | None = None):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not Path(exe).exists() or (pki is not None and not Path(passwd).exists()):
            pytest.fail("mosquitto is not installed: .ci/run installs Debian's package (apt-get install mosquitto)")
        self.exe, self.port, self.proc = exe, free_port(), None
        stay = "user root\n" if os.geteuid() == 0 else ""  # else, as root, it drops to a user who cannot read here
        common = f"listener {self.port} 127.0.0.1\npersistence true\npersistence_location {folder}/\n{stay}"
        if pki is None:
            conf = "allow_anonymous true\n"
        else:
            subprocess.run(
                [passwd, "-b", "-c", str(folder / "passwd"), USER, PASSWORD], check=True, capture_output=True
            )
            conf = (
                f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
                f"require_certificate true\nallow_anonymous false\npassword_file {folder}/passwd\n"
                "autosave_interval 1\nautosave_on_changes true\n"
            )
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(common + conf)
        self.log = folder / "mosquitto.log"  # a file, not a pipe: a pipe nobody reads fills up and stalls the broker

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def tls_client(pki: Path, client_id: str = "", clean_session: bool = True):
    """A paho client with the test's user, password and client certificate, for a Broker with `pki`."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
    client.username_pw_set(USER, PASSWORD)
    client.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / "client.crt"), keyfile=str(pki / "client.key"))
    return client
