"""pushproxy.tasks: each task loads and calls its service; delivery retries transient errors."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry

from pushproxy import tasks
from pushproxy.models import PushSubscription
from tests.fakes.push_service import PushService, Rule

pytestmark = pytest.mark.django_db


def _kwargs(sub: PushSubscription) -> dict[str, Any]:
    return {
        "subscription": sub.public_id,
        "generation": sub.pk,
        "kind": "newMail",
        "exists": 1,
        "event": "e1",
    }


def test_deliver_push_calls_the_delivery_service(
    sub: PushSubscription, push_service: PushService
) -> None:
    result = tasks.deliver_push.apply(kwargs=_kwargs(sub))
    assert result.get() == "sent"
    assert len(push_service.to("/new")) == 1


def test_deliver_push_retries_on_a_5xx_with_backoff(
    sub: PushSubscription, push_service: PushService
) -> None:
    push_service.rules["/new"] = Rule(status=502)
    with pytest.raises(Retry) as caught:
        tasks.deliver_push.apply(kwargs=_kwargs(sub), throw=True, retries=3, max_retries=8).get()
    # The fourth try waits backoff(3): 16 s plus up to half of it, not Celery's default 180 s.
    assert 16 <= caught.value.when <= 24
    assert len(push_service.to("/new")) == 1  # it was tried, and failed
    sub.refresh_from_db()
    assert (sub.status, sub.push_failures, sub.pushes_sent) == ("active", 1, 0)


def test_deliver_push_gives_up_after_its_last_retry(
    sub: PushSubscription, push_service: PushService
) -> None:
    from pushproxy.services.delivery import TransientPushError

    push_service.rules["/new"] = Rule(status=502)
    with pytest.raises(TransientPushError):
        tasks.deliver_push.apply(kwargs=_kwargs(sub), throw=True, retries=8).get()


def test_deliver_push_retries_a_429_after_its_retry_after(
    sub: PushSubscription, push_service: PushService
) -> None:
    push_service.rules["/new"] = Rule(status=429, headers={"Retry-After": "42"})
    with pytest.raises(Retry) as caught:
        tasks.deliver_push.apply(kwargs=_kwargs(sub), throw=True).get()
    assert caught.value.when == 42


def test_backoff_doubles_with_jitter_up_to_five_minutes() -> None:
    assert 2 <= tasks.backoff(0) <= 3
    assert 16 <= tasks.backoff(3) <= 24
    assert 300 <= tasks.backoff(20) <= 450


def test_stop_and_drain_reach_this_processes_manager(db: None) -> None:
    import socket

    from pushproxy import imap, monitor
    from pushproxy.sealing import Secret
    from tests.fakes.imapstub import PASSWORD, USER, ImapStub

    stub = ImapStub().start()
    monitor.reset_manager()
    try:
        manager = monitor.get_manager()
        for number, name in enumerate(["ps_stopped", "ps_drained"], start=1):
            session = imap.open_session(
                imap.Mailbox("127.0.0.1", stub.port, "none", USER),
                Secret(PASSWORD),
                connect=lambda: socket.create_connection(("127.0.0.1", stub.port), timeout=5),
                timeout=5,
            )
            manager.adopt(monitor.Watched(name, number, "acct", name, session))
        assert stub.wait_for(lambda: stub.idling == 2)

        assert tasks.stop.apply(kwargs={"subscription": "ps_stopped"}).get() is True
        assert tasks.stop.apply(kwargs={"subscription": "ps_none"}).get() is False
        assert stub.wait_for(lambda: stub.logouts == 1)
        assert tasks.drain.apply(kwargs={"notify": False}).get() == 1
        assert stub.wait_for(lambda: stub.logouts == 2 and stub.connections == 0)
        assert manager.accepting  # reopened by default: an operator's reset, not a stop
    finally:
        monitor.reset_manager()
        stub.stop()


def test_watch_records_a_refused_seal_and_answers_failed(sub: PushSubscription) -> None:
    PushSubscription.objects.filter(pk=sub.pk).update(status="pending")
    outcome = tasks.watch.apply(
        kwargs={
            "subscription": sub.public_id,
            "generation": sub.pk,
            "host": "127.0.0.1",
            "port": 143,
            "security": "none",
            "mailbox": "INBOX",
            "client_id": sub.client_id,
            "account_key": sub.account_key,
            "queue": None,
            "sealed": "bm90IGEgc2VhbA==",
        }
    ).get()
    assert outcome == {"status": "failed", "code": "push_unavailable", "mode": ""}
    sub.refresh_from_db()
    assert (sub.status, sub.error) == ("failed", "push_unavailable")
