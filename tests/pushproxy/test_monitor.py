"""pushproxy.monitor: the session manager against the IMAP stub, with a recording sink."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pushproxy import imap, monitor
from pushproxy.sealing import Secret
from tests.fakes.certs import Certificate, self_signed
from tests.fakes.imapstub import PASSWORD, USER, ImapStub


@dataclass
class RecordingSink:
    """Where a real monitor would queue push jobs: here, a list (with a condition)."""

    events: list[tuple[str, str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def new_mail(self, *, subscription: str, generation: int, exists: int, event: str) -> None:
        with self.cond:
            self.events.append(("newMail", subscription, exists))
            self.cond.notify_all()

    def lost(self, *, subscription: str, generation: int, reason: str, event: str) -> None:
        with self.cond:
            self.events.append(("reconnect", subscription, reason))
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[tuple[str, str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.events) < count and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            return list(self.events)


TIMING = monitor.Timing(idle_seconds=60, poll_seconds=0.3, command_timeout=2, coalesce_gap=0.05)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def manager(sink: RecordingSink) -> Iterator[monitor.Manager]:
    manager = monitor.Manager(sink=sink, timing=TIMING, max_sessions=10, max_per_account=2)
    yield manager
    manager.drain(reason="test over", notify=False, wait=5)


@pytest.fixture
def stub() -> Iterator[ImapStub]:
    server = ImapStub().start()
    yield server
    server.stop()


def watched(
    server: ImapStub,
    subscription: str,
    generation: int,
    client: str = "phone",
    account: str = "acct",
    cert: Certificate | None = None,
    host: str = "imap.test",
) -> monitor.Watched:
    session = imap.open_session(
        imap.Mailbox("imap.test", server.port, "none" if cert is None else "tls", USER),
        Secret(PASSWORD),
        connect=lambda: socket.create_connection(("127.0.0.1", server.port), timeout=5),
        timeout=5,
        ssl_context=None if cert is None else cert.client_context(),
    )
    return monitor.Watched(subscription, generation, account, client, session, host=host)


def test_new_mail_is_reported_with_the_new_count(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_a", 1))
    assert stub.wait_for(lambda: "IDLE" in stub.commands)

    stub.new_mail()

    assert sink.wait(1) == [("newMail", "ps_a", 3)]


def test_a_burst_of_exists_is_pushed_once(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_a", 1))
    assert stub.wait_for(lambda: "IDLE" in stub.commands)

    stub.new_mail(5)  # five EXISTS back to back
    time.sleep(1.2)  # longer than the longest burst

    assert sink.events == [("newMail", "ps_a", 7)]


def test_separate_messages_are_pushed_separately(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_a", 1))
    assert stub.wait_for(lambda: "IDLE" in stub.commands)
    stub.new_mail()
    sink.wait(1)
    stub.new_mail()
    assert sink.wait(2) == [("newMail", "ps_a", 3), ("newMail", "ps_a", 4)]


@pytest.mark.parametrize(
    ("fault", "reasons"),
    [("bye", {"bye"}), ("reset", {"reset", "eof"}), ("stop", {"eof", "reset"})],
)
def test_losing_the_server_reports_reconnect_once(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub, fault: str, reasons: set[str]
) -> None:
    manager.adopt(watched(stub, "ps_a", 1))
    assert stub.wait_for(lambda: "IDLE" in stub.commands)

    getattr(stub, fault)()

    events = sink.wait(1)
    assert len(events) == 1 and events[0][:2] == ("reconnect", "ps_a") and events[0][2] in reasons
    assert manager.count() == 0
    time.sleep(0.3)
    assert len(sink.events) == 1  # no tight loop of reports


def test_idle_is_reissued_and_an_unanswered_done_is_a_timeout(
    sink: RecordingSink, stub: ImapStub
) -> None:
    timing = monitor.Timing(
        idle_seconds=0.3, poll_seconds=60, command_timeout=0.5, coalesce_gap=0.05
    )
    manager = monitor.Manager(sink=sink, timing=timing, max_sessions=10, max_per_account=2)
    try:
        manager.adopt(watched(stub, "ps_a", 1))
        assert stub.wait_for(lambda: stub.commands.count("IDLE") >= 3, timeout=3)
        assert stub.commands.count("DONE") >= 2  # DONE + IDLE again, each time answered
        assert sink.events == []

        stub.stall_done = True  # the server stops answering DONE (a stalled server)
        events = sink.wait(1, timeout=3)
        assert events == [("reconnect", "ps_a", "timeout")]
    finally:
        manager.drain(reason="test over", notify=False, wait=5)


def test_without_idle_the_mailbox_is_polled_with_noop(
    manager: monitor.Manager, sink: RecordingSink
) -> None:
    server = ImapStub(idle=False).start()
    try:
        manager.adopt(watched(server, "ps_a", 1))
        assert server.wait_for(lambda: server.commands.count("NOOP") >= 2, timeout=3)
        server.new_mail(2)
        assert sink.wait(1, timeout=2) == [("newMail", "ps_a", 4)]
        assert "IDLE" not in server.commands
    finally:
        manager.drain(reason="test over", notify=False, wait=5)
        server.stop()


def test_a_newer_session_replaces_the_older_without_a_push(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_old", 1))
    manager.adopt(watched(stub, "ps_new", 2))

    # The stub tells only idling connections about new mail: wait for the new one's IDLE.
    assert stub.wait_for(lambda: stub.connections == 1 and stub.idling == 1)
    assert stub.logouts == 1  # the old one logged out
    assert manager.count() == 1 and manager.holds("ps_new") and not manager.holds("ps_old")
    stub.new_mail()
    assert sink.wait(1) == [("newMail", "ps_new", 3)]
    time.sleep(0.2)
    assert sink.events == [("newMail", "ps_new", 3)]


def test_an_older_session_arriving_late_is_refused(
    manager: monitor.Manager, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_new", 2))
    late = watched(stub, "ps_old", 1)
    with pytest.raises(monitor.Refusal) as caught:
        manager.adopt(late)
    assert caught.value.code == "superseded"
    with pytest.raises(monitor.Refusal):
        manager.check(account_key="acct", client_id="phone", generation=1)
    late.session.close()
    assert manager.holds("ps_new")


def test_the_per_account_cap_counts_devices_not_replacements(
    manager: monitor.Manager, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_1", 1, client="phone"))
    manager.adopt(watched(stub, "ps_2", 2, client="laptop"))
    manager.check(account_key="acct", client_id="phone", generation=3)  # a replacement: fine
    with pytest.raises(monitor.Refusal) as caught:
        manager.check(account_key="acct", client_id="tablet", generation=4)
    assert caught.value.code == "too_many_subscriptions"
    manager.check(account_key="other-account", client_id="tablet", generation=5)


def test_poll_mode_sessions_are_capped_per_host(sink: RecordingSink, stub: ImapStub) -> None:
    polled = ImapStub(idle=False).start()
    manager = monitor.Manager(
        sink=sink, timing=TIMING, max_sessions=10, max_per_account=2, max_poll_per_host=2
    )
    try:
        manager.adopt(watched(polled, "ps_1", 1, account="a1"))
        manager.adopt(watched(polled, "ps_2", 2, account="a2"))
        assert manager.polled_on("imap.test") == 2
        third = watched(polled, "ps_3", 3, account="a3")
        with pytest.raises(monitor.Refusal) as caught:
            manager.adopt(third)
        assert caught.value.code == "poll_cap_reached"
        third.session.close()
        # Replacing one of the two is not a third; IDLE sessions and other hosts do not count.
        manager.adopt(watched(polled, "ps_2b", 4, account="a2"))
        manager.adopt(watched(stub, "ps_idle", 5, account="a4"))
        manager.adopt(watched(polled, "ps_other", 6, account="a5", host="imap.other.test"))
        assert manager.polled_on("imap.test") == 2 and manager.polled_on("imap.other.test") == 1
        assert manager.count() == 4
        # A polled session that ends frees its place.
        assert manager.stop("ps_1", wait=5)
        assert manager.polled_on("imap.test") == 1
        manager.adopt(watched(polled, "ps_3b", 7, account="a3"))
        assert manager.polled_on("imap.test") == 2
    finally:
        manager.drain(reason="test over", notify=False, wait=5)
        polled.stop()
    assert manager.polled_on("imap.test") == 0


def test_stop_logs_out_without_a_push(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_a", 1))
    assert stub.wait_for(lambda: "IDLE" in stub.commands)

    assert manager.stop("ps_a", wait=3) is True

    assert stub.wait_for(lambda: stub.connections == 0)
    assert "LOGOUT" in stub.commands
    assert manager.stop("ps_a") is False
    time.sleep(0.2)
    assert sink.events == []


def test_drain_with_notify_pushes_reconnect_for_each_and_refuses_new(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub
) -> None:
    manager.adopt(watched(stub, "ps_1", 1, client="phone"))
    manager.adopt(watched(stub, "ps_2", 2, client="laptop"))

    assert manager.drain(reason="shutdown", notify=True, wait=5) == 2

    assert sorted(sink.wait(2)) == [
        ("reconnect", "ps_1", "shutdown"),
        ("reconnect", "ps_2", "shutdown"),
    ]
    assert stub.wait_for(lambda: stub.connections == 0)
    with pytest.raises(monitor.Refusal):
        manager.check(account_key="acct", client_id="x", generation=9)


def test_idle_is_reissued_before_rfc_2177s_29_minutes() -> None:
    timing = monitor.Timing.from_settings()
    assert timing.idle_seconds <= 25 * 60 < 29 * 60
    assert timing.coalesce_gap < timing.coalesce_max <= 1.0


# --- sessions the manager ends log out, over TLS too -----------------------------------------


@pytest.fixture
def tls_stub() -> Iterator[tuple[ImapStub, Certificate]]:
    cert = self_signed("imap.test")
    server = ImapStub(tls=cert.server_context()).start()
    yield server, cert
    server.stop()


@pytest.mark.parametrize("how", ["stop", "replace", "drain"])
def test_ended_tls_sessions_send_done_and_logout(
    manager: monitor.Manager,
    sink: RecordingSink,
    tls_stub: tuple[ImapStub, Certificate],
    how: str,
) -> None:
    stub, cert = tls_stub
    manager.adopt(watched(stub, "ps_a", 1, cert=cert))
    assert stub.wait_for(lambda: stub.idling == 1)

    if how == "stop":
        assert manager.stop("ps_a", wait=3) is True
    elif how == "replace":
        manager.adopt(watched(stub, "ps_b", 2, cert=cert))
    else:
        assert manager.drain(reason="shutdown", notify=False, wait=5, reopen=True) == 1

    assert stub.wait_for(lambda: stub.logouts == 1)
    assert stub.commands.count("DONE") == 1 and "LOGOUT" in stub.commands
    assert stub.wait_for(lambda: stub.connections == (1 if how == "replace" else 0))
    time.sleep(0.2)
    assert sink.events == []


@pytest.mark.parametrize("head", [b"* 3 FETCH (BODY[] {1000000000}\r\n", b"* OK no end in sight "])
def test_a_flooding_server_ends_the_session_with_a_reconnect(
    manager: monitor.Manager, sink: RecordingSink, stub: ImapStub, head: bytes
) -> None:
    manager.adopt(watched(stub, "ps_a", 1))
    assert stub.wait_for(lambda: stub.idling == 1)

    stub.flood(head, 400_000)

    assert sink.wait(1, timeout=10) == [("reconnect", "ps_a", "protocol")]
    assert manager.count() == 0


def test_the_heap_is_frozen_after_each_wave_of_logins() -> None:
    import gc

    freezer = monitor.HeapFreezer(step=3)
    try:
        assert not freezer.after(2)
        assert freezer.after(3) and gc.get_freeze_count() > 0
        assert not freezer.after(5)  # 2 more since the freeze
        assert not freezer.after(1)  # sessions ended: counted from there
        assert freezer.after(4)
    finally:
        gc.unfreeze()
