"""pushproxy.services.subscriptions: nothing stays pending for ever (a hand-off the broker
refused, one nobody ran), against real push services and (with Redis) the real workers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from pushproxy.models import MonitorState, MonitorWorker, PushSubscription, Status, token_hash
from pushproxy.services import monitors, subscriptions
from tests.conftest import need_service
from tests.fakes.push_service import PushService
from tests.pushproxy.conftest import Workers
from tests.pushproxy.test_api_subscriptions import URL, auth, subscribe

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def _pending(make_subscription: Callable[..., Any], push_service: PushService, age: float) -> Any:
    """A subscription still pending `age` seconds after its request (the API answered 202)."""
    sub = make_subscription(
        new_mail=push_service.url("/new"),
        reconnect=push_service.url("/reconnect"),
        client_id=uuid.uuid4().hex[:8],
        status=Status.PENDING,
        mode="",
        awaited=False,
    )
    PushSubscription.objects.filter(pk=sub.pk).update(
        created_at=timezone.now() - timedelta(seconds=age)
    )
    return sub


def test_a_pending_subscription_past_its_deadline_fails_and_its_app_is_told(
    make_subscription: Callable[..., Any], push_service: PushService, push_stack: Workers | None
) -> None:
    limit = django_settings.PUSHPROXY_PENDING_SECONDS
    stale = _pending(make_subscription, push_service, age=limit + 5)
    fresh = _pending(make_subscription, push_service, age=limit - 20)

    assert subscriptions.expire_pending() == 1

    stale.refresh_from_db()
    assert (stale.status, stale.error, stale.awaited) == (Status.FAILED, "push_unavailable", False)
    [push] = push_service.wait_for("/reconnect", timeout=10)
    body = json.loads(push.body)
    assert (body["type"], body["subscription"], body["reason"]) == (
        "reconnect",
        stale.public_id,
        "push_unavailable",
    )
    fresh.refresh_from_db()
    assert fresh.status == Status.PENDING
    assert subscriptions.expire_pending() == 0  # once


def test_get_answers_failed_for_a_pending_subscription_past_its_deadline(
    client: Client, make_subscription: Callable[..., Any], push_service: PushService
) -> None:
    sub = _pending(make_subscription, push_service, age=3600)
    token = "t-" + uuid.uuid4().hex
    PushSubscription.objects.filter(pk=sub.pk).update(token_hash=token_hash(token))

    shown = client.get(f"{URL}/{sub.public_id}", **auth(token))

    assert shown.status_code == HTTPStatus.OK
    assert (shown.json()["status"], shown.json()["error"]) == ("failed", "push_unavailable")


def test_the_expire_command_and_task_call_the_sweep(
    make_subscription: Callable[..., Any], push_service: PushService, capsys: Any
) -> None:
    from pushproxy import tasks

    _pending(make_subscription, push_service, age=3600)
    call_command("expire_push_logins")
    assert "expired 1 pending subscriptions" in capsys.readouterr().out
    _pending(make_subscription, push_service, age=3600)
    assert tasks.expire_pending.apply().get() == 1
    assert "pushproxy.expire_pending" in {
        entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()
    }


def test_a_hand_off_nobody_runs_ends_failed_with_a_reconnect_push(
    client: Client,
    push_service: PushService,
    push_stack: Workers | None,
    settings: Any,
) -> None:
    """The monitor it was sent to is gone: the API answers 202; the sweep ends it."""
    if push_stack is None:
        need_service("Redis", "a hand-off waits in a monitor's queue only with a broker")
    settings.PUSHPROXY_LOGIN_WAIT_SECONDS = 1.0
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    MonitorWorker.objects.update(state=MonitorState.STOPPED)
    monitors.register(ghost)
    try:
        answer = subscribe(client, push_service, port=1143, client_id="ghosted")
        assert answer.status_code == HTTPStatus.ACCEPTED, answer.content
        created = answer.json()
        PushSubscription.objects.filter(public_id=created["id"]).update(
            created_at=timezone.now() - timedelta(seconds=settings.PUSHPROXY_PENDING_SECONDS + 1)
        )

        assert subscriptions.expire_pending() == 1

        [push] = push_service.wait_for("/reconnect", timeout=10)
        assert json.loads(push.body)["reason"] == "push_unavailable"
        shown = client.get(f"{URL}/{created['id']}", **auth(created["token"])).json()
        assert (shown["status"], shown["error"]) == ("failed", "push_unavailable")
    finally:
        import redis

        MonitorWorker.objects.filter(worker_id=ghost).delete()
        monitors.register(push_stack.worker_id)
        redis.Redis.from_url(django_settings.REDIS_URL).delete(monitors.queue_name(ghost))


def test_a_hand_off_the_broker_refuses_is_503_and_keeps_nothing(
    client: Client,
    push_service: PushService,
    push_settings: Any,
    free_port: int,
) -> None:
    if not django_settings.HAS_REDIS:
        need_service("Redis", "without a broker the hand-off runs in this process")
    from tests.providers.services.test_fanout import celery_through

    monitors.register(f"mon-{uuid.uuid4().hex[:6]}")
    with celery_through(broker=f"redis://127.0.0.1:{free_port}/0"):
        answer = subscribe(client, push_service, port=1143)

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE, answer.content
    assert answer.json()["code"] == "push_unavailable"
    assert PushSubscription.objects.count() == 0
    assert push_service.received == []
