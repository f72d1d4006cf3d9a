"""Security by default on serve's OPC UA server (issue 27, item 4), with real asyncua clients on loopback: a
user connects over Basic256Sha256 SignAndEncrypt to the server's own certificate (made once, reused), a wrong
password is refused and never logged, and a server bound to every interface (0.0.0.0, not loopback) refuses
anonymous sessions and passwords over an unsigned channel itself, though the client comes from 127.0.0.1."""

from __future__ import annotations

import logging

import pytest

from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.plc.opcua_security import CERT, KEY, _make, certificate
from runtime.serve.results.plc.plc import LoopThread
from runtime.serve.results.sinks import parse_sink
from tests.brokers import free_port

asyncua = pytest.importorskip("asyncua")
ua = asyncua.ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: E402

SECRET = "s3cret-Pa55-never-logged"


@pytest.fixture
def loop():
    thread = LoopThread("test-opcua-security")
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client_pair(tmp_path_factory):
    """The client's own certificate (SignAndEncrypt needs one on both sides), made as the server makes its."""
    folder = tmp_path_factory.mktemp("client-pki")
    _make(folder, folder / CERT, folder / KEY)
    return certificate(folder)


def _server(tmp_path, host: str, extra: str = ""):
    users = tmp_path / "users"
    users.write_text(f"# the line's users\nplc:{SECRET}\nscada:another-one\n")
    port = free_port()
    spec = f"opcua-server://{host}:{port}/lineside?users={users}&pki={tmp_path / 'pki'}{extra}"
    sink = parse_sink(spec, Metrics(), 4)
    sink.start()
    return sink, port


def _connect(loop, port: int, client_pair=None, user: str | None = None, password: str | None = None):
    """A client session: over SignAndEncrypt with `client_pair`, else unsigned; as `user`, else anonymous."""
    client = asyncua.Client(f"opc.tcp://127.0.0.1:{port}/lineside", timeout=5)
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    if client_pair is not None:
        cert, key, uri = client_pair
        client.application_uri = uri
        loop.run_sync(
            client.set_security(
                SecurityPolicyBasic256Sha256, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt
            ),
            10,
        )
    loop.run_sync(client.connect(), 15)
    return client


def _state(loop, client) -> str:
    ns = loop.run_sync(client.get_namespace_index("urn:lineside"), 5)
    return loop.run_sync(client.get_node(f"ns={ns};s=System.State").read_value(), 5)


def test_a_user_connects_over_signandencrypt_and_a_wrong_password_is_refused_unlogged(
    tmp_path, loop, client_pair, caplog
):
    with caplog.at_level(logging.DEBUG):
        sink, port = _server(tmp_path, "0.0.0.0")
        try:
            endpoints = loop.run_sync(
                asyncua.Client(f"opc.tcp://127.0.0.1:{port}/lineside").connect_and_get_server_endpoints(), 10
            )
            client = _connect(loop, port, client_pair, "plc", SECRET)
            try:
                assert _state(loop, client) == "Initialized"  # no camera told it more: a sink alone
                assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            finally:
                loop.run_sync(client.disconnect(), 5)
            with pytest.raises(ua.UaStatusCodeError) as refused:
                _connect(loop, port, client_pair, "plc", SECRET + "x")
        finally:
            sink.close()
    assert [(e.SecurityMode, e.SecurityPolicyUri.rsplit("#", 1)[-1]) for e in endpoints] == [
        (ua.MessageSecurityMode.SignAndEncrypt, "Basic256Sha256")
    ]  # the only endpoint offered off loopback
    assert [t.TokenType for t in endpoints[0].UserIdentityTokens] == [ua.UserTokenType.UserName]
    assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "wrong user name or password refused" in logged and SECRET not in logged


def test_off_loopback_the_server_itself_refuses_anonymous_and_unsigned_sessions(
    tmp_path, loop, client_pair, monkeypatch
):
    """The endpoints list no anonymous token and no unsigned endpoint, but a hostile client may ask for a session
    anyway: the server itself must refuse it."""
    sink, port = _server(tmp_path, "0.0.0.0")
    offered = asyncua.Client.find_endpoint

    def any_endpoint(endpoints, mode, policy_uri):  # asyncua's client would stop at "no matching endpoint"
        try:
            return offered(endpoints, mode, policy_uri)
        except ua.UaError:
            return endpoints[0]

    monkeypatch.setattr(asyncua.Client, "find_endpoint", staticmethod(any_endpoint))
    try:
        with pytest.raises(ua.UaStatusCodeError) as anonymous_signed:
            _connect(loop, port, client_pair)
        with pytest.raises(ua.UaStatusCodeError) as anonymous_open:
            _connect(loop, port)
        with pytest.raises(ua.UaStatusCodeError) as password_in_clear:
            _connect(loop, port, None, "plc", SECRET)
    finally:
        sink.close()
    assert anonymous_signed.value.code == ua.StatusCodes.BadIdentityTokenRejected
    assert anonymous_open.value.code == ua.StatusCodes.BadIdentityTokenRejected
    assert password_in_clear.value.code == ua.StatusCodes.BadUserAccessDenied


def test_on_loopback_anonymous_stays_and_the_certificate_is_made_once(tmp_path, loop, client_pair):
    sink, port = _server(tmp_path, "127.0.0.1")
    try:
        client = _connect(loop, port)  # the plc-sim's path: anonymous, unsigned
        assert _state(loop, client) == "Initialized"
        loop.run_sync(client.disconnect(), 5)
        client = _connect(loop, port, client_pair, "scada", "another-one")
        loop.run_sync(client.disconnect(), 5)
    finally:
        sink.close()
    made = (tmp_path / "pki" / CERT).read_bytes()
    again, port = _server(tmp_path, "127.0.0.1", "&security=none")
    try:
        client = _connect(loop, port, client_pair, "plc", SECRET)
        loop.run_sync(client.disconnect(), 5)
    finally:
        again.close()
    assert (tmp_path / "pki" / CERT).read_bytes() == made  # reused, so a client's trust in it holds
    assert (tmp_path / "pki" / KEY).stat().st_mode & 0o077 == 0  # the key is serve's user's alone


@pytest.mark.parametrize(
    "users, extra, message",
    [
        (None, "", "0.0.0.0 is not loopback, so anonymous clients are refused and a user is needed"),
        ("missing", "", "users file"),
        ("plc-without-colon " + SECRET, "", "line 1: use NAME:PASSWORD"),
        ("plc:" + SECRET + "\nplc:" + SECRET, "", "user 'plc' given twice"),
        ("plc:" + SECRET, "&security=tls", "security='tls': use basic256sha256"),
    ],
)
def test_bad_security_options_are_refused_in_one_line_without_the_password(
    tmp_path, users, extra, message, monkeypatch
):
    monkeypatch.delenv("LINESIDE_OPCUA_USERS", raising=False)
    query = ""
    if users == "missing":
        query = f"?users={tmp_path / 'no-such-file'}"
    elif users is not None:
        (tmp_path / "users").write_text(users)
        query = f"?users={tmp_path / 'users'}"
    spec = f"opcua-server://0.0.0.0:{free_port()}/x{query or '?'}{extra}".replace("?&", "?")
    with pytest.raises(ValueError) as e:
        parse_sink(spec.rstrip("?"), Metrics(), 4)
    said = str(e.value)
    assert message in said and "\n" not in said and SECRET not in said, said


def test_users_from_the_environment_and_a_bad_pki_path_refuse_start_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LINESIDE_OPCUA_USERS", f"plc:{SECRET}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sink = parse_sink(f"opcua-server://0.0.0.0:{free_port()}/x?pki={blocker / 'pki'}", Metrics(), 4)
    assert sink.policy.users == {"plc": SECRET} and not sink.policy.anonymous
    with pytest.raises(OSError) as e:
        sink.start()
    said = str(e.value)
    assert "pki folder" in said and "cannot be made" in said and "\n" not in said and SECRET not in said, said
