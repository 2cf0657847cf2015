"""pushproxy.imap against the scriptable IMAP stub: login, TLS, IDLE/NOOP, faults."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

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
    timeout: float = 5,
    **kwargs: object,
) -> imap.Session:
    target = imap.Mailbox(host, server.port, security, USER, mailbox)
    session = imap.open_session(
        target,
        Secret(password),
        connect=lambda: socket.create_connection(("127.0.0.1", server.port), timeout=5),
        timeout=timeout,
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


# --- passwords that are not ASCII (the LOGIN fallback) ---------------------------------------

NON_ASCII = "Pässwörd-ü-42"


def _secrets_in(exc: BaseException, secret: str) -> list[str]:
    """Where `secret` shows in an exception: its text, repr, args, and chained ones."""
    found = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for name, text in (
            ("str", str(current)),
            ("repr", repr(current)),
            ("args", repr(current.args)),
            ("dict", repr(vars(current))),
        ):
            if secret in text:
                found.append(f"{type(current).__name__}.{name}")
        current = current.__cause__ or current.__context__
    return found


@pytest.mark.parametrize(
    "password",
    [NON_ASCII, 'a "quoted" \\ back-slashed password'],
    ids=["utf8-literal", "quoted-string"],
)
def test_login_without_auth_plain_logs_in_with_login(password: str) -> None:
    server = ImapStub(auth_plain=False, password=password).start()
    try:
        session = _open(server, password=password)
        assert session.exists == 2
        assert "LOGIN" in server.commands and "AUTHENTICATE" not in server.commands
        assert server.logins == 1
        session.logout(2)
    finally:
        server.stop()


def test_a_refused_non_ascii_login_is_scrubbed_and_closes_the_socket() -> None:
    server = ImapStub(auth_plain=False).start()
    try:
        with pytest.raises(imap.ImapFailure) as caught:
            _open(server, password=NON_ASCII)
        assert caught.value.code == "imap_auth_failed"
        assert _secrets_in(caught.value, NON_ASCII) == []
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        assert server.wait_for(lambda: server.connections == 0)
    finally:
        server.stop()


def test_imaplib_keeps_no_log_of_the_login_line() -> None:
    server = ImapStub(auth_plain=False).start()
    try:
        target = imap.Mailbox("127.0.0.1", server.port, "none", USER)
        client = imap._Client(
            target,
            lambda: socket.create_connection(("127.0.0.1", server.port), timeout=5),
            None,
            5,
        )
        client.login(USER, PASSWORD)
        assert server.logins == 1
        assert PASSWORD not in repr(vars(client._imap))
        client._imap.shutdown()
    finally:
        server.stop()


# --- a server that floods us (memory) ---------------------------------------------------------


def _wait_until_lost(session: imap.Session, seconds: float = 10.0) -> imap.SessionLost:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            session.wait(0.5)
        except imap.SessionLost as lost:
            return lost
    raise AssertionError("the session did not end")


@pytest.mark.parametrize(
    "head",
    [
        b"* 3 FETCH (BODY[] {1000000000}\r\n",  # a literal of a gigabyte
        b"* OK ",  # a line that never ends
    ],
)
def test_a_flood_while_idling_ends_the_session_at_the_cap(stub: ImapStub, head: bytes) -> None:
    session = _open(stub)
    session.start_idle(2)
    stub.flood(head, 400_000)  # well past the cap (64 KiB), well short of imaplib's 1 MB

    lost = _wait_until_lost(session)

    assert lost.reason == "protocol"
    assert len(session._reader.buffer) < 200_000


def test_a_flood_inside_the_examine_answer_fails_the_login_and_closes() -> None:
    import time

    server = ImapStub(examine_extra=b"* 1 FETCH (BODY[] {1000000000}\r\n" + b"x" * 600_000).start()
    try:
        started = time.monotonic()
        with pytest.raises(imap.ImapFailure) as caught:
            _open(server, timeout=30)
        assert caught.value.code == "imap_error"
        assert time.monotonic() - started < 10  # refused at the announcement, no 30 s wait
        assert server.wait_for(lambda: server.connections == 0)
    finally:
        server.stop()


def test_a_flood_of_short_lines_inside_the_login_fails_it() -> None:
    lines = b"".join(b"* %d EXPUNGE\r\n" % n for n in range(100_000))  # about 1.5 MB
    server = ImapStub(examine_extra=lines).start()
    try:
        with pytest.raises(imap.ImapFailure) as caught:
            _open(server)
        assert caught.value.code == "imap_error"
        assert server.wait_for(lambda: server.connections == 0)
    finally:
        server.stop()


# --- the server ends IDLE by itself ------------------------------------------------------------


def test_a_server_ending_idle_with_ok_gets_idle_again(stub: ImapStub) -> None:
    session = _open(stub)
    session.start_idle(2)
    stub.end_idle("OK")
    assert session.wait(1) == []
    assert stub.wait_for(lambda: stub.commands.count("IDLE") == 2 and stub.idling == 1)
    stub.new_mail()
    events = session.wait(2)
    assert [(e.kind, e.number) for e in events] == [("EXISTS", 3)]
    assert session.end_idle(2) == []
    session.logout(2)
    assert stub.logouts == 1


def test_a_server_ending_idle_with_no_ends_the_session(stub: ImapStub) -> None:
    session = _open(stub)
    session.start_idle(2)
    stub.end_idle("NO")
    assert _wait_until_lost(session).reason == "protocol"


# --- logging out after an interrupt, over TLS too ---------------------------------------------


@pytest.mark.parametrize("tls", [False, True])
def test_an_interrupted_session_still_logs_out_cleanly(tls: bool) -> None:
    import threading

    cert = self_signed("imap.test")
    server = ImapStub(tls=cert.server_context() if tls else None).start()
    try:
        session = _open(
            server,
            security="tls" if tls else "none",
            host="imap.test",
            ssl_context=cert.client_context(),
        )
        session.start_idle(2)
        threading.Timer(0.2, session.interrupt).start()
        with pytest.raises(imap.SessionLost):
            session.wait(30)

        session.logout(2)

        assert server.wait_for(lambda: server.connections == 0)
        assert server.commands[-2:] == ["DONE", "LOGOUT"]
        assert server.logouts == 1
    finally:
        server.stop()


GREENLET_LOGOUT = """
from gevent import monkey
monkey.patch_all()
import socket, sys, gevent
from pushproxy import imap
from pushproxy.sealing import Secret
from tests.fakes.certs import Certificate

port, cert_pem = int(sys.argv[1]), sys.argv[2].encode()
cert = Certificate(cert_pem, b"")
session = imap.open_session(
    imap.Mailbox("imap.test", port, "tls", "juliet@example.org"),
    Secret("Balcony-at-midnight-42"),
    connect=lambda: socket.create_connection(("127.0.0.1", port), timeout=5),
    timeout=5,
    ssl_context=cert.client_context(),
)
session.start_idle(2)
gevent.spawn_later(0.2, session.interrupt)
try:
    session.wait(30)
except imap.SessionLost as lost:
    print("lost", lost.reason)
session.logout(2)
print("done")
"""


def test_an_interrupted_tls_session_logs_out_in_greenlets_too() -> None:
    """The monitor process runs sessions as greenlets: there `interrupt` wakes the reader
    without touching TLS, so DONE and LOGOUT still go out."""
    import subprocess
    import sys
    from pathlib import Path

    cert = self_signed("imap.test")
    server = ImapStub(tls=cert.server_context()).start()
    try:
        finished = subprocess.run(
            [sys.executable, "-c", GREENLET_LOGOUT, str(server.port), cert.cert_pem.decode()],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.split() == ["lost", "stopped", "done"]
        assert server.wait_for(lambda: server.connections == 0)
        assert server.commands[-2:] == ["DONE", "LOGOUT"]
        assert server.logouts == 1
    finally:
        server.stop()


def test_inbox_is_one_mailbox_whatever_its_case() -> None:
    lower = imap.Mailbox("imap.example.org", 993, "tls", "juliet@example.org", "inbox")
    assert lower.mailbox == "INBOX"
    assert (
        lower.account_key
        == imap.Mailbox("imap.example.org", 993, "tls", "juliet@example.org").account_key
    )
    assert imap.Mailbox("h", 993, "tls", "u", "Archive").mailbox == "Archive"


def test_privacy_mode_account_keys_are_keyed(settings: Any) -> None:
    import hashlib

    mailbox = imap.Mailbox("imap.example.org", 993, "tls", "juliet@example.org")
    plain = hashlib.sha256(b"imap.example.org\x00993\x00juliet@example.org\x00INBOX").hexdigest()
    assert mailbox.account_key == plain
    settings.PUSHPROXY_PRIVACY = True
    keyed = mailbox.account_key
    assert keyed != plain and len(keyed) == 64
    upper = imap.Mailbox("IMAP.example.org", 993, "tls", "Juliet@example.org")
    assert upper.account_key == keyed  # still one key per account
    settings.SECRET_KEY = "another secret key of sufficient length"
    assert mailbox.account_key != keyed
