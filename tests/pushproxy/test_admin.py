"""The push proxy's admin screens: lists, filters, privacy-mode search, the end action."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from pushproxy.models import MonitorWorker, PushSubscription, Status
from tests.fakes.push_service import PushService

CHANGELIST = "/admin/pushproxy/pushsubscription/"


@pytest.mark.django_db
def test_changelist_shows_status_host_and_counts_never_secrets(
    admin_client: Client, make_subscription: Callable[..., PushSubscription]
) -> None:
    sub = make_subscription(
        new_mail="https://push.example.net/n", reconnect="https://push.example.net/r", pushes_sent=7
    )
    page = admin_client.get(CHANGELIST).content.decode()
    assert sub.public_id in page and "imap.example.org" in page and "juliet@example.org" in page
    assert ">7<" in page
    detail = admin_client.get(f"{CHANGELIST}{sub.pk}/change/").content.decode()
    assert "push.example.net" in detail
    assert sub.token_hash not in detail


@pytest.mark.django_db
def test_filters_by_status_and_host(
    admin_client: Client, make_subscription: Callable[..., PushSubscription]
) -> None:
    live = make_subscription(
        new_mail="https://p.example/n", reconnect="https://p.example/r", client_id="a"
    )
    lost = make_subscription(
        new_mail="https://p.example/n",
        reconnect="https://p.example/r",
        client_id="b",
        status=Status.LOST,
    )
    page = admin_client.get(CHANGELIST, {"status": "lost"}).content.decode()
    assert lost.public_id in page and live.public_id not in page
    page = admin_client.get(CHANGELIST, {"host": "imap.example.org"}).content.decode()
    assert lost.public_id in page and live.public_id in page


@pytest.mark.django_db
def test_privacy_mode_hides_user_names_but_finds_them_by_keyed_hash(
    admin_client: Client, make_subscription: Callable[..., PushSubscription], settings: Any
) -> None:
    settings.PUSHPROXY_PRIVACY = True
    sub = make_subscription(
        new_mail="https://p.example/n", reconnect="https://p.example/r", username=""
    )
    page = admin_client.get(CHANGELIST).content.decode()
    assert "juliet@example.org" not in page and "(private #" in page
    found = admin_client.get(CHANGELIST, {"q": "Juliet@Example.org"}).content.decode()
    assert sub.public_id in found
    missing = admin_client.get(CHANGELIST, {"q": "romeo@example.org"}).content.decode()
    assert sub.public_id not in missing


@pytest.mark.django_db(transaction=True)
def test_end_action_ends_live_ones_with_a_reconnect_push(
    admin_client: Client,
    make_subscription: Callable[..., PushSubscription],
    push_service: PushService,
    push_stack: Any,
) -> None:
    live = make_subscription(
        new_mail=push_service.url("/n"), reconnect=push_service.url("/r"), client_id="a"
    )
    lost = make_subscription(
        new_mail=push_service.url("/n"),
        reconnect=push_service.url("/r"),
        client_id="b",
        status=Status.LOST,
    )

    answer = admin_client.post(
        CHANGELIST, {"action": "end_selected", "_selected_action": [live.pk, lost.pk]}, follow=True
    )

    assert "1 ended, 1 skipped" in answer.content.decode()
    live.refresh_from_db()
    assert (live.status, live.error) == (Status.ENDED, "ended_by_operator")
    [push] = push_service.wait_for("/r", timeout=10)
    assert json.loads(push.body)["reason"] == "ended_by_operator"
    assert json.loads(push.body)["subscription"] == live.public_id


@pytest.mark.django_db
def test_monitor_list_shows_heartbeat_and_sessions(admin_client: Client) -> None:
    MonitorWorker.objects.create(
        worker_id="mon-1", queue="idle.mon-1", hostname="box", pid=42, sessions=1234
    )
    page = admin_client.get("/admin/pushproxy/monitorworker/").content.decode()
    assert "mon-1" in page and "1234" in page
