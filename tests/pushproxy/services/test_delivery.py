"""pushproxy.services.delivery: one push, every format, every answer a push service gives."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from pushproxy.models import PushSubscription, Status
from pushproxy.services import delivery
from tests.fakes import egress, resolver
from tests.fakes.push_service import PushService, Rule
from tests.fakes.user_agent import UserAgent, verify_vapid

pytestmark = pytest.mark.django_db


def deliver(sub: PushSubscription, kind: str = "newMail", **kwargs: Any) -> str:
    options: dict[str, Any] = {
        "event": uuid.uuid4().hex,
        "exists": 5 if kind == "newMail" else None,
    }
    options.update(kwargs)
    return delivery.deliver(subscription=sub.public_id, generation=sub.pk, kind=kind, **options)


def test_new_mail_is_a_json_post_and_counted(
    sub: PushSubscription, push_service: PushService
) -> None:
    assert deliver(sub, event="e" * 32) == "sent"

    [push] = push_service.to("/new")
    assert push.method == "POST"
    assert json.loads(push.body) == {
        "type": "newMail",
        "subscription": sub.public_id,
        "mailbox": "INBOX",
        "exists": 5,
        "reason": None,
        "event": "e" * 32,
    }
    sub.refresh_from_db()
    assert (sub.pushes_sent, sub.last_event_type) == (1, "newMail")
    assert sub.last_event_at is not None


def test_simplepush_puts_an_increasing_version(
    make_subscription: Callable[..., PushSubscription],
    push_service: PushService,
    push_settings: Any,
) -> None:
    sub = make_subscription(
        new_mail=push_service.url("/sp"),
        reconnect=push_service.url("/r"),
        new_mail_format="simplepush",
    )
    deliver(sub)
    deliver(sub)
    assert [(p.method, p.body) for p in push_service.to("/sp")] == [
        ("PUT", b"version=1"),
        ("PUT", b"version=2"),
    ]


def test_web_push_is_encrypted_for_the_device_and_signed(
    make_subscription: Callable[..., PushSubscription],
    push_service: PushService,
    push_settings: Any,
) -> None:
    agent = UserAgent()
    keys = agent.keys()
    sub = make_subscription(
        new_mail=push_service.url("/wp"),
        reconnect=push_service.url("/r"),
        new_mail_format="webpush",
        new_mail_p256dh=keys["p256dh"],
        new_mail_auth=keys["auth"],
    )
    assert deliver(sub) == "sent"
    [push] = push_service.to("/wp")
    verify_vapid(push.headers["authorization"], push_service.url("/wp"))
    assert json.loads(agent.decrypt(push.body))["exists"] == 5


def test_reconnect_marks_the_subscription_lost_once(
    sub: PushSubscription, push_service: PushService
) -> None:
    event = uuid.uuid4().hex
    assert deliver(sub, "reconnect", reason="bye", event=event) == "sent"
    sub.refresh_from_db()
    assert (sub.status, sub.error) == (Status.LOST, "bye")
    # A retry of the same event is sent again; any other event for it is not.
    assert deliver(sub, "reconnect", reason="bye", event=event) == "sent"
    assert deliver(sub, "reconnect", reason="eof") == "skipped"
    assert deliver(sub, "newMail") == "skipped"
    assert len(push_service.to("/reconnect")) == 2
    assert json.loads(push_service.to("/reconnect")[0].body)["reason"] == "bye"


@pytest.mark.parametrize("status", [Status.REPLACED, Status.ENDED, Status.PENDING])
def test_a_subscription_that_is_not_active_gets_no_push(
    sub: PushSubscription, push_service: PushService, status: str
) -> None:
    PushSubscription.objects.filter(pk=sub.pk).update(status=status)
    assert deliver(sub) == "skipped"
    assert deliver(sub, "reconnect", reason="bye") == "skipped"
    assert push_service.received == []


def test_a_wrong_generation_is_unknown(sub: PushSubscription, push_service: PushService) -> None:
    assert (
        delivery.deliver(
            subscription=sub.public_id, generation=sub.pk + 1, kind="newMail", event="x"
        )
        == "unknown"
    )
    assert push_service.received == []


@pytest.mark.parametrize("status", [404, 410])
def test_a_gone_endpoint_ends_the_subscription(
    sub: PushSubscription, push_service: PushService, status: int
) -> None:
    push_service.rules["/new"] = Rule(status=status)
    assert deliver(sub) == "gone"
    sub.refresh_from_db()
    assert (sub.status, sub.error, sub.push_failures) == (Status.GONE, "endpoint_gone", 1)
    assert deliver(sub) == "skipped"


def test_429_asks_to_retry_after_the_services_delay(
    sub: PushSubscription, push_service: PushService
) -> None:
    push_service.rules["/new"] = Rule(status=429, headers={"Retry-After": "17"})
    with pytest.raises(delivery.RetryLater) as caught:
        deliver(sub)
    assert caught.value.seconds == 17


def test_5xx_and_network_errors_are_transient(
    sub: PushSubscription, push_service: PushService
) -> None:
    push_service.rules["/new"] = Rule(status=503)
    with pytest.raises(delivery.TransientPushError):
        deliver(sub)
    push_service.stop()
    with pytest.raises(delivery.TransientPushError):
        deliver(sub)
    sub.refresh_from_db()
    assert (sub.status, sub.push_failures, sub.pushes_sent) == (Status.ACTIVE, 2, 0)


def test_other_4xx_is_recorded_and_not_retried(
    sub: PushSubscription, push_service: PushService
) -> None:
    push_service.rules["/new"] = Rule(status=400)
    assert deliver(sub) == "rejected"
    sub.refresh_from_db()
    assert (sub.status, sub.push_failures) == (Status.ACTIVE, 1)


def test_an_endpoint_rebound_to_loopback_is_refused_at_send_time(
    make_subscription: Callable[..., PushSubscription], push_service: PushService, settings: Any
) -> None:
    # RELIABILITY.md check 19: accepted when it named a public address, now it names us.
    settings.NETGUARD_RESOLVER = resolver.PATH
    settings.PORTAL_EGRESS_ALLOW = []
    resolver.reset()
    resolver.ANSWERS["push.example.net"] = ["127.0.0.1"]
    sub = make_subscription(
        new_mail=f"https://push.example.net:{push_service.port}/new",
        reconnect="https://push.example.net/r",
    )
    try:
        with egress.watching() as attempts:
            assert deliver(sub) == "refused"
    finally:
        resolver.reset()
    assert attempts == []
    assert push_service.received == []
    sub.refresh_from_db()
    assert sub.push_failures == 1


def test_a_429_asking_for_longer_than_the_cap_is_given_up(
    sub: PushSubscription, push_service: PushService
) -> None:
    push_service.rules["/new"] = Rule(status=429, headers={"Retry-After": "86400"})
    assert deliver(sub) == "rejected"
    sub.refresh_from_db()
    assert (sub.status, sub.push_failures, sub.pushes_sent) == (Status.ACTIVE, 1, 0)


def test_a_429_with_an_http_date_waits_until_then(
    sub: PushSubscription, push_service: PushService
) -> None:
    from email.utils import format_datetime

    from django.utils import timezone

    then = timezone.now() + timezone.timedelta(seconds=120)
    push_service.rules["/new"] = Rule(
        status=429, headers={"Retry-After": format_datetime(then, usegmt=True)}
    )
    with pytest.raises(delivery.RetryLater) as caught:
        deliver(sub)
    assert 110 <= caught.value.seconds <= 121
