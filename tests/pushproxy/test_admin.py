"""The push proxy's admin screens: lists, filters, privacy-mode search, the end action (only
for staff who may change subscriptions), deleting (which logs live sessions out)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from pushproxy.models import MonitorWorker, PushSubscription, Status
from tests.fakes.imapstub import PASSWORD as STUB_PASSWORD
from tests.fakes.imapstub import USER as STUB_USER
from tests.fakes.imapstub import ImapStub
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


@pytest.mark.django_db
def test_monitor_list_shows_the_fleets_capacity_and_each_lease(
    admin_client: Client, settings: Any, redis_client: Any
) -> None:
    from pushproxy import fleet

    settings.PUSHPROXY_FLEET_PREFIX = f"test-{uuid.uuid4().hex}:"
    settings.PUSHPROXY_MAX_SESSIONS = 10_000
    for worker_id, sessions in (("mon-live", 1200), ("mon-gone", 0)):
        MonitorWorker.objects.create(
            worker_id=worker_id,
            queue=f"idle.{worker_id}",
            hostname="box",
            pid=1,
            sessions=sessions,
        )
    live = fleet.Membership("mon-live")
    try:
        live.renew()
        live.acquire(300, start=0)
        page = admin_client.get("/admin/pushproxy/monitorworker/").content.decode()
    finally:
        live.leave()
    assert "Push fleet capacity" in page
    summary = page[page.index('id="fleet-summary"') : page.index('id="result_list"')]
    assert "<td>1</td>" in summary  # one live monitor
    assert f"<td>300 / {fleet.SHARDS - 300}</td>" in summary
    assert "<td>1200 of 10000 they may hold</td>" in summary
    rows = page[page.index('id="result_list"') :]
    assert "live, 300 shards" in rows and "lapsed" in rows
    assert "last renewal" in page.lower()


@pytest.mark.django_db
def test_monitor_list_says_when_no_monitor_holds_a_lease(
    admin_client: Client, settings: Any, redis_client: Any
) -> None:
    settings.PUSHPROXY_FLEET_PREFIX = f"test-{uuid.uuid4().hex}:"
    page = admin_client.get("/admin/pushproxy/monitorworker/").content.decode()
    assert "No monitor holds a live lease" in page


@pytest.mark.django_db
def test_monitor_list_without_redis_describes_the_embedded_manager(
    admin_client: Client, settings: Any
) -> None:
    settings.HAS_REDIS = False
    page = admin_client.get("/admin/pushproxy/monitorworker/").content.decode()
    assert "Embedded mode" in page and "No monitor holds" not in page


# --- who may end, and what deleting does ------------------------------------------------------


def _staff(django_user_model: Any, name: str, *codenames: str) -> Client:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(name, password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("codenames", "may_end"),
    [
        (["view_pushsubscription"], False),
        (["view_pushsubscription", "change_pushsubscription"], True),
    ],
    ids=["view-only", "may-change"],
)
@pytest.mark.django_db(transaction=True)
def test_only_staff_who_may_change_subscriptions_are_offered_the_end_action(
    django_user_model: Any,
    make_subscription: Callable[..., PushSubscription],
    push_service: PushService,
    push_stack: Any,
    codenames: list[str],
    may_end: bool,
) -> None:
    live = make_subscription(new_mail=push_service.url("/n"), reconnect=push_service.url("/r"))
    staff = _staff(django_user_model, "staff", *codenames)

    listing = staff.get(CHANGELIST)
    staff.post(CHANGELIST, {"action": "end_selected", "_selected_action": [live.pk]})

    assert listing.status_code == 200 and live.public_id in listing.content.decode()
    assert ('value="end_selected"' in listing.content.decode()) is may_end
    live.refresh_from_db()
    assert live.status == (Status.ENDED if may_end else Status.ACTIVE)
    if may_end:
        assert len(push_service.wait_for("/r", timeout=10)) == 1
    else:
        time.sleep(0.5)
        assert push_service.received == []


@pytest.mark.parametrize("how", ["delete view", "delete_selected"])
@pytest.mark.django_db(transaction=True)
def test_deleting_a_live_subscription_logs_its_session_out_without_a_push(
    admin_client: Client, client: Client, push_service: PushService, push_stack: Any, how: str
) -> None:
    from tests.pushproxy.test_api_subscriptions import subscribe

    stub = ImapStub().start()
    try:
        answer = subscribe(
            client, push_service, port=stub.port, username=STUB_USER, password=STUB_PASSWORD
        )
        assert answer.status_code == 201, answer.content
        assert stub.wait_for(lambda: stub.idling == 1)
        sub = PushSubscription.objects.get(public_id=answer.json()["id"])

        if how == "delete view":
            deleted = admin_client.post(f"{CHANGELIST}{sub.pk}/delete/", {"post": "yes"})
        else:
            deleted = admin_client.post(
                CHANGELIST,
                {"action": "delete_selected", "_selected_action": [sub.pk], "post": "yes"},
            )

        assert deleted.status_code == 302
        assert not PushSubscription.objects.filter(pk=sub.pk).exists()
        assert stub.wait_for(lambda: stub.logouts == 1 and stub.connections == 0, timeout=10)
        time.sleep(0.5)
        assert push_service.received == []
    finally:
        stub.stop()
