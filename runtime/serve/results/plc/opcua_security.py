"""Who may talk to serve's OPC UA server, and over what: security on unless the endpoint is loopback.

    opcua-server://0.0.0.0:4840/lineside?users=/etc/lineside/opcua-users&pki=/var/lib/lineside/opcua-pki
    opcua-server://127.0.0.1:4840/lineside                  (loopback: anonymous, unsigned, as before)
    opcua-server://0.0.0.0:4840/lineside?security=none      (asked for: anonymous, unsigned, on the network)

With users (the `users` file, else the LINESIDE_OPCUA_USERS variable: lines NAME:PASSWORD) the server
offers Basic256Sha256 SignAndEncrypt with its own certificate, made on first start (self-signed,
RSA 2048, ten years) in the `pki` folder and reused afterwards: a client trusts it once. Anonymous
sessions and the unsigned endpoint are offered only when the host is loopback or `security=none`
is asked for; anywhere else a session must come over the encrypted channel with a user's password
(a user name sent over an unsigned channel is refused too, so no password crosses the network in
the clear). Passwords are compared in constant time and never logged nor put in an error.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ...process import logs

log = logging.getLogger("lineside.serve")

USERS_ENV = "LINESIDE_OPCUA_USERS"
CERT, KEY = "server-cert.der", "server-key.pem"  # in the pki folder; a CA-signed pair may replace them
MAX_USERS = 1000


def loopback(host: str) -> bool:
    """Whether the endpoint's host is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_users(text: str, where: str) -> dict[str, str]:
    """NAME:PASSWORD lines (blank ones and # comments skipped) -> {name: password}. Errors name the line,
    never its text: it holds a password."""
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, password = line.partition(":")
        name = name.strip()
        if not colon or not name or not password:
            raise ValueError(
                f"{where} line {n}: use NAME:PASSWORD (a user name, a colon, a password that is not empty)"
            )
        if name in users:
            raise ValueError(f"{where} line {n}: user {name!r} given twice")
        users[name] = password
        if len(users) > MAX_USERS:
            raise ValueError(f"{where}: more than {MAX_USERS} users")
    if not users:
        raise ValueError(f"{where} names no user (lines NAME:PASSWORD)")
    return users


def read_users(path: str | None) -> dict[str, str]:
    """The users of the `users` file, else of LINESIDE_OPCUA_USERS, else none."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise ValueError(f"users file {path!r} cannot be read: {reason}") from None
        return parse_users(text, f"users file {path!r}")
    text = os.environ.get(USERS_ENV, "")
    return parse_users(text, USERS_ENV) if text.strip() else {}


@dataclass(frozen=True)
class Policy:
    """What the server offers: the encrypted endpoint (with users), the open one (anonymous)."""

    users: dict
    anonymous: bool  # anonymous sessions and the unsigned endpoint
    pki: Path

    @property
    def secure(self) -> bool:
        return bool(self.users)


def policy(spec: str, host: str, opts: dict) -> Policy:
    """The sink's policy from its options; refused when nobody could connect."""
    security = opts.get("security", "basic256sha256").lower()
    if security not in ("basic256sha256", "none"):
        raise ValueError(f"--sink {spec!r}: security={security!r}: use basic256sha256 (the default) or none")
    try:
        users = read_users(opts.get("users"))
    except ValueError as e:
        raise ValueError(f"--sink {spec!r}: {e}") from None
    anonymous = security == "none" or loopback(host)
    if not anonymous and not users:
        raise ValueError(
            f"--sink {spec!r}: {host} is not loopback, so anonymous clients are refused and a user is needed: "
            f"users=FILE or {USERS_ENV} (lines NAME:PASSWORD), or security=none for an open, unsigned endpoint"
        )
    return Policy(users, anonymous, Path(opts.get("pki") or "opcua-pki"))


class Users:
    """asyncua's user manager: a user by name and password, or anonymous where the policy allows it."""

    def __init__(self, asyncua, users: dict, anonymous: bool, local: bool):
        """`local`: the endpoint is loopback, where a password over the unsigned channel stays on this machine."""
        from asyncua.crypto.permission_rules import User, UserRole

        self.user_class, self.role = User, UserRole
        self.users, self.anonymous, self.local = {k: v.encode() for k, v in users.items()}, anonymous, local
        self.refusals = logs.RateLimit()

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return self.user_class(role=self.role.User) if self.anonymous else self._refuse("an anonymous session")
        if (
            not certificate and not self.local
        ):  # an unsigned channel (no client certificate): the password came in clear
            return self._refuse("a user name over an unsigned channel (use Basic256Sha256 SignAndEncrypt)")
        given = password.encode() if isinstance(password, str) else bytes(password or b"")
        known = self.users.get(username)
        if known is None or not hmac.compare_digest(given, known):
            return self._refuse("a wrong user name or password")
        return self.user_class(role=self.role.User, name=username)

    def _refuse(self, what: str):
        record = logging.LogRecord(log.name, logging.WARNING, __file__, 0, "OPC UA server: %s refused", (what,), None)
        if self.refusals.filter(record):
            log.handle(record)
        return None


def certificate(pki: Path) -> tuple[Path, Path, str]:
    """(certificate, private key, application URI): the pki folder's pair, made on first start."""
    cert, key = pki / CERT, pki / KEY
    from cryptography import x509

    if not cert.exists() and not key.exists():
        _make(pki, cert, key)
    try:
        loaded = x509.load_der_x509_certificate(cert.read_bytes())
        key.read_bytes()
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(
            f"pki folder {str(pki)!r}: {CERT} and {KEY} cannot be read ({reason}); remove both to have a new pair made"
        ) from None
    try:
        names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uri = names.get_values_for_type(x509.UniformResourceIdentifier)[0]
    except (x509.ExtensionNotFound, IndexError):
        raise ValueError(
            f"pki folder {str(pki)!r}: {CERT} has no application URI (a URI subject alternative name)"
        ) from None
    return cert, key, uri


def _make(pki: Path, cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host = socket.gethostname() or "lineside"
    uri = f"urn:{host}:lineside:opcua-server"
    try:
        pki.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"pki folder {str(pki)!r} cannot be made: {e.strerror or e}") from None
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lineside OPC UA server {host}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName(host)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(True, True, True, True, False, False, False, False, False), True
        )  # signature, non-repudiation, key and data encipherment
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(private, hashes.SHA256())
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the key readable by serve's user only
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        cert.write_bytes(built.public_bytes(serialization.Encoding.DER))
    except OSError as e:
        raise ValueError(f"pki folder {str(pki)!r}: cannot write the new certificate: {e.strerror or e}") from None
    log.info("OPC UA server: made a self-signed certificate, %s (application URI %s)", cert, uri)
