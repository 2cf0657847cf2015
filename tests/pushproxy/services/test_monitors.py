"""pushproxy.services.monitors.reap: a dead monitor's subscriptions become `lost` once, and
each gets one reconnect push, paced per IMAP host."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from pushproxy import fleet
from pushproxy.models import MonitorState, MonitorWorker, PushSubscription, Status
from pushproxy.services import monitors


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The reconnect pushes the reaper queues (their Celery delivery is tested elsewhere)."""
    queued: list[dict[str, Any]] = []
    monkeypatch.setattr(monitors, "enqueue_push", lambda **kwargs: queued.append(kwargs))
    return queued


@pytest.fixture
def fleet_prefix(settings: Any) -> Iterator[str]:
    """A fleet of its own in Redis (when there is one), removed afterwards."""
    prefix = f"test-{uuid.uuid4().hex}:"
    settings.PUSHPROXY_FLEET_PREFIX = prefix
    yield prefix
    if settings.HAS_REDIS:
        client = fleet.client()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)


def _monitor(worker_id: str, *, beat_ago: float) -> MonitorWorker:
    return MonitorWorker.objects.create(
        worker_id=worker_id,
        queue=monitors.queue_name(worker_id),
        hostname="m1.example",
        pid=1,
        heartbeat_at=timezone.now() - timedelta(seconds=beat_ago),
    )


@pytest.mark.django_db
def test_a_monitor_with_a_stale_heartbeat_is_reaped_once_and_its_clients_paced(
    make_subscription: Callable[..., PushSubscription],
    pushes: list[dict[str, Any]],
    fleet_prefix: str,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.PUSHPROXY_RECONNECTS_PER_HOST_PER_SECOND = 2
    _monitor("dead", beat_ago=600)
    _monitor("alive", beat_ago=1)
    url = "https://push.example/r"
    lost = [
        make_subscription(new_mail=url, reconnect=url, client_id=f"c{n}", monitor="dead")
        for n in range(3)
    ]
    pending = make_subscription(
        new_mail=url, reconnect=url, client_id="p", monitor="dead", status=Status.PENDING
    )
    other_host = make_subscription(
        new_mail=url, reconnect=url, client_id="o", monitor="dead", host="imap.other.example"
    )
    kept = make_subscription(new_mail=url, reconnect=url, client_id="k", monitor="alive")

    with django_capture_on_commit_callbacks(execute=True):
        assert monitors.reap() == {"dead": 4}

    assert MonitorWorker.objects.get(worker_id="dead").state == MonitorState.LOST
    assert MonitorWorker.objects.get(worker_id="alive").state == MonitorState.RUNNING
    for sub in [*lost, other_host]:
        sub.refresh_from_db()
        assert (sub.status, sub.error) == (Status.LOST, monitors.MONITOR_LOST)
    # A pending login is left to expire_pending (it may still come back with a result).
    pending.refresh_from_db()
    kept.refresh_from_db()
    assert pending.status == Status.PENDING and kept.status == Status.ACTIVE

    assert sorted(p["subscription"] for p in pushes) == sorted(
        s.public_id for s in [*lost, other_host]
    )
    assert {(p["kind"], p["reason"]) for p in pushes} == {("reconnect", "monitor_lost")}
    assert len({p["event"] for p in pushes}) == 1  # one batch
    # Two a second for imap.example.org (plus up to 1 s of jitter); the other host at once.
    by_id = {p["subscription"]: p["countdown"] for p in pushes}
    for index, sub in enumerate(lost):
        assert index / 2 <= by_id[sub.public_id] <= index / 2 + 1.0
    assert by_id[other_host.public_id] <= 1.0

    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert monitors.reap() == {}  # already lost: nothing twice
    assert pushes == []


@pytest.mark.django_db
def test_lapsed_leases_reap_a_monitor_whose_database_row_still_looks_alive(
    make_subscription: Callable[..., PushSubscription],
    pushes: list[dict[str, Any]],
    fleet_prefix: str,
    settings: Any,
    redis_client: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    _monitor("killed", beat_ago=1)  # kill -9 a moment ago: the row has not aged yet
    _monitor("alive", beat_ago=1)
    url = "https://push.example/r"
    sub = make_subscription(new_mail=url, reconnect=url, monitor="killed")
    killed, alive = fleet.Membership("killed"), fleet.Membership("alive")
    settings.PUSHPROXY_LEASE_SECONDS = 0.2
    killed.renew()
    taken = killed.acquire(8, start=fleet.shard_of(sub.account_key))
    assert fleet.shard_of(sub.account_key) in taken
    time.sleep(0.3)  # its leases lapse
    settings.PUSHPROXY_LEASE_SECONDS = 30
    alive.renew()

    with django_capture_on_commit_callbacks(execute=True):
        assert monitors.reap() == {"killed": 1}

    sub.refresh_from_db()
    assert sub.status == Status.LOST and [p["subscription"] for p in pushes] == [sub.public_id]
    # Its shards went to the live monitor, so the account's next subscription lands there.
    assert alive.renew().owned == taken
    assert monitors.owner_for(sub.account_key).worker_id == "alive"
    # Should the killed one come back (a paused VM), it learns it was reaped and starts afresh.
    comeback = killed.renew()
    assert comeback.reaped and comeback.owned == frozenset()


@pytest.mark.django_db
def test_a_monitor_killed_while_logging_out_is_reaped_but_a_stopped_one_is_not(
    make_subscription: Callable[..., PushSubscription],
    pushes: list[dict[str, Any]],
    fleet_prefix: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    url = "https://push.example/r"
    for worker_id, state in (("cut-short", MonitorState.STOPPING), ("done", MonitorState.STOPPED)):
        monitor = _monitor(worker_id, beat_ago=600)
        monitor.state = state
        monitor.save()
    left = make_subscription(new_mail=url, reconnect=url, client_id="a", monitor="cut-short")

    with django_capture_on_commit_callbacks(execute=True):
        assert monitors.reap() == {"cut-short": 1}

    left.refresh_from_db()
    assert left.status == Status.LOST and [p["subscription"] for p in pushes] == [left.public_id]
    assert MonitorWorker.objects.get(worker_id="done").state == MonitorState.STOPPED
