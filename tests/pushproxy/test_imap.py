"""pushproxy.imap against the scriptable IMAP stub: login, TLS, IDLE/NOOP, faults."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pushproxy import imap
from pushproxy.sealing import Secret
from tests.fakes.certs import self_signed
from tests.fakes.imapstub import PASSWORD, USER, ImapStub

OPENED: list[imap.Session] = []


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


@pytest.fixture
def stub() -> Iterator[ImapStub]:
    server = ImapStub().start()
    yield server
    server.stop()


def _open(
    server: ImapStub,
    *,
    security: str = "none",
    password: str = PASSWORD,
    mailbox: str = "INBOX",
    host: str = "127.0.0.1",
    **kwargs: object,
) -> imap.Session:
    target = imap.Mailbox(host, server.port, security, USER, mailbox)
    session = imap.open_session(
        target,
        Secret(password),
        connect=lambda: socket.create_connection(("127.0.0.1", server.port), timeout=5),
        timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )
    OPENED.append(session)
    return session


def test_open_session_logs_in_examines_and_reports_idle(stub: ImapStub) -> None:
    session = _open(stub)
    assert (session.exists, session.idle) == (2, True)
    assert "EXAMINE" in stub.commands and "SELECT" not in stub.commands
    assert "AUTHENTICATE" in stub.commands  # PLAIN where offered: UTF-8 passwords
    session.logout(2)
    assert stub.wait_for(lambda: stub.connections == 0)


def test_session_socket_has_tcp_keepalive_60_20_3(stub: ImapStub) -> None:
    session = _open(stub)
    sock = session.socket
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 20
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    session.close()


def test_wrong_password_is_imap_auth_failed(stub: ImapStub) -> None:
    with pytest.raises(imap.ImapFailure) as caught:
        _open(stub, password="wrong")
    assert caught.value.code == "imap_auth_failed"
    assert "wrong" not in str(caught.value)


def test_unknown_mailbox_is_mailbox_not_found(stub: ImapStub) -> None:
    with pytest.raises(imap.ImapFailure) as caught:
        _open(stub, mailbox="Nowhere")
    assert caught.value.code == "mailbox_not_found"


def test_nothing_listening_is_imap_unreachable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    target = imap.Mailbox("127.0.0.1", port, "none", USER)
    with pytest.raises(imap.ImapFailure) as caught:
        imap.open_session(
            target,
            Secret(PASSWORD),
            connect=lambda: socket.create_connection(("127.0.0.1", port)),
            timeout=2,
        )
    assert caught.value.code == "imap_unreachable"
    probe.close()


def test_idle_sees_exists_and_done_ends_it(stub: ImapStub) -> None:
    session = _open(stub)
    assert session.start_idle(2) == []
    stub.new_mail(2)
    events = session.wait(2)
    while len(events) < 2:
        events += session.wait(2)
    assert [(e.kind, e.number) for e in events] == [("EXISTS", 3), ("EXISTS", 4)]
    assert session.wait(0.1) == []  # a timeout is "nothing", not an error
    assert session.end_idle(2) == []
    assert stub.commands[-1] == "DONE"
    session.logout(2)


@pytest.mark.parametrize(("fault", "reason"), [("bye", "bye"), ("reset", "reset")])
def test_server_faults_while_idling_end_the_session(
    stub: ImapStub, fault: str, reason: str
) -> None:
    session = _open(stub)
    session.start_idle(2)
    getattr(stub, fault)()
    with pytest.raises(imap.SessionLost) as caught:
        for _ in range(20):
            session.wait(1)
    assert (
        caught.value.reason in {reason, "eof"}
        if fault == "reset"
        else caught.value.reason == reason
    )


def test_a_closed_connection_is_eof_not_silence(stub: ImapStub) -> None:
    session = _open(stub)
    session.start_idle(2)
    stub.stop()
    with pytest.raises(imap.SessionLost) as caught:
        session.wait(2)
    assert caught.value.reason in {"eof", "reset"}


def test_unanswered_done_times_out(stub: ImapStub) -> None:
    stub.stall_done = True
    session = _open(stub)
    session.start_idle(2)
    with pytest.raises(imap.SessionLost) as caught:
        session.end_idle(0.5)
    assert caught.value.reason == "timeout"


def test_noop_reports_new_messages_without_idle() -> None:
    server = ImapStub(idle=False).start()
    try:
        session = _open(server)
        assert session.idle is False
        server.new_mail(1)
        assert [(e.kind, e.number) for e in session.noop(2)] == [("EXISTS", 3)]
        session.logout(2)
    finally:
        server.stop()


def test_interrupt_wakes_a_blocked_wait(stub: ImapStub) -> None:
    import threading
    import time

    session = _open(stub)
    session.start_idle(2)
    threading.Timer(0.2, session.interrupt).start()
    started = time.monotonic()
    with pytest.raises(imap.SessionLost):
        session.wait(30)
    assert time.monotonic() - started < 5
    assert session.interrupted
    session.logout(1)
    assert stub.wait_for(lambda: stub.connections == 0)


def test_tls_verifies_the_certificate_for_the_host_name() -> None:
    cert = self_signed("imap.test")
    server = ImapStub(tls=cert.server_context()).start()
    try:
        session = _open(server, security="tls", host="imap.test", ssl_context=cert.client_context())
        assert session.exists == 2
        session.logout(2)
        # The system's CAs do not know the stub's certificate: refused by default.
        with pytest.raises(imap.ImapFailure) as caught:
            _open(server, security="tls", host="imap.test")
        assert caught.value.code == "imap_tls_failed"
        # A certificate for another name is refused even when trusted.
        with pytest.raises(imap.ImapFailure) as caught:
            _open(server, security="tls", host="other.test", ssl_context=cert.client_context())
        assert caught.value.code == "imap_tls_failed"
    finally:
        server.stop()


def test_starttls_upgrades_before_login() -> None:
    cert = self_signed("imap.test")
    server = ImapStub(starttls=cert.server_context()).start()
    try:
        session = _open(
            server, security="starttls", host="imap.test", ssl_context=cert.client_context()
        )
        assert (
            server.commands[:3] == ["CAPABILITY", "STARTTLS", "CAPABILITY"]
            or "STARTTLS" in server.commands
        )
        assert server.commands.index("STARTTLS") < server.commands.index("AUTHENTICATE")
        session.logout(2)
    finally:
        server.stop()


def test_starttls_required_but_not_offered_is_imap_tls_failed(stub: ImapStub) -> None:
    with pytest.raises(imap.ImapFailure) as caught:
        _open(stub, security="starttls")
    assert caught.value.code == "imap_tls_failed"
    assert "AUTHENTICATE" not in stub.commands and "LOGIN" not in stub.commands


def test_account_key_ignores_case_of_host_and_user_but_not_mailbox() -> None:
    a = imap.Mailbox("IMAP.Example.org", 993, "tls", "Juliet@Example.org", "INBOX")
    b = imap.Mailbox("imap.example.org", 993, "starttls", "juliet@example.org", "INBOX")
    assert a.account_key == b.account_key
    assert (
        a.account_key
        != imap.Mailbox("imap.example.org", 993, "tls", "juliet@example.org", "Archive").account_key
    )
    assert (
        a.account_key
        != imap.Mailbox("imap.example.org", 143, "tls", "juliet@example.org").account_key
    )
