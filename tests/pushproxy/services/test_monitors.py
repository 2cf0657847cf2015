"""pushproxy.services.monitors.reap: a dead monitor's subscriptions become `lost` once, and
each gets one reconnect push (through the real push path to a local push service), paced
per IMAP host."""

from __future__ import annotations

import json
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
from tests.fakes.push_service import PushService, Received
from tests.pushproxy.conftest import Workers

pytestmark = pytest.mark.django_db(transaction=True)


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


@pytest.fixture
def lost_to(
    make_subscription: Callable[..., PushSubscription],
    push_stack: Workers | None,
    push_service: PushService,
) -> Callable[..., PushSubscription]:
    """An active subscription held by `monitor`, its endpoints on the local push service
    (/n for new mail, /r for reconnect), delivered by the real push workers (in-process
    without Redis)."""

    def make(monitor: str, client_id: str, **fields: Any) -> PushSubscription:
        return make_subscription(
            new_mail=push_service.url("/n"),
            reconnect=push_service.url("/r"),
            client_id=client_id,
            monitor=monitor,
            **fields,
        )

    return make


def _monitor(worker_id: str, *, beat_ago: float) -> MonitorWorker:
    return MonitorWorker.objects.create(
        worker_id=worker_id,
        queue=monitors.queue_name(worker_id),
        hostname="m1.example",
        pid=1,
        heartbeat_at=timezone.now() - timedelta(seconds=beat_ago),
    )


def _reasons(pushes: list[Received]) -> dict[str, str]:
    bodies = [json.loads(push.body) for push in pushes]
    assert all(body["type"] == "reconnect" for body in bodies)
    return {body["subscription"]: body["reason"] for body in bodies}


def test_a_monitor_with_a_stale_heartbeat_is_reaped_once_and_its_clients_paced(
    lost_to: Callable[..., PushSubscription],
    push_service: PushService,
    fleet_prefix: str,
    settings: Any,
) -> None:
    settings.PUSHPROXY_RECONNECTS_PER_HOST_PER_SECOND = 2
    _monitor("dead", beat_ago=600)
    _monitor("alive", beat_ago=1)
    lost = [lost_to("dead", f"c{n}") for n in range(3)]
    pending = lost_to("dead", "p", status=Status.PENDING)
    other_host = lost_to("dead", "o", host="imap.other.example")
    kept = lost_to("alive", "k")

    started = time.monotonic()
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

    pushes = push_service.wait_for("/r", count=4, timeout=15)
    assert _reasons(pushes) == {s.public_id: "monitor_lost" for s in [*lost, other_host]}
    assert len({json.loads(push.body)["event"] for push in pushes}) == 1  # one batch
    if settings.HAS_REDIS:
        # Celery holds each push for its countdown: two a second for imap.example.org, so
        # the k-th of its three arrives k/2 s after the reaper ran at the earliest (the
        # jitter adds up to 1 s). Without Redis the pushes run at once, in-process.
        ids = {s.public_id for s in lost}
        arrived = sorted(
            p.at - started for p in pushes if json.loads(p.body)["subscription"] in ids
        )
        for k, seconds in enumerate(arrived):
            assert seconds >= k / 2, arrived

    assert monitors.reap() == {}  # already lost: nothing twice
    assert len(push_service.wait_for("/r", count=5, timeout=2.5)) == 4


def test_lapsed_leases_reap_a_monitor_whose_database_row_still_looks_alive(
    lost_to: Callable[..., PushSubscription],
    push_service: PushService,
    fleet_prefix: str,
    settings: Any,
    redis_client: Any,
) -> None:
    _monitor("killed", beat_ago=1)  # kill -9 a moment ago: the row has not aged yet
    _monitor("alive", beat_ago=1)
    sub = lost_to("killed", "phone")
    killed, alive = fleet.Membership("killed"), fleet.Membership("alive")
    settings.PUSHPROXY_LEASE_SECONDS = 0.2
    killed.renew()
    taken = killed.acquire(8, start=fleet.shard_of(sub.account_key))
    assert fleet.shard_of(sub.account_key) in taken
    time.sleep(0.3)  # its leases lapse
    settings.PUSHPROXY_LEASE_SECONDS = 30
    alive.renew()

    assert monitors.reap() == {"killed": 1}

    sub.refresh_from_db()
    assert sub.status == Status.LOST
    assert _reasons(push_service.wait_for("/r", timeout=10)) == {sub.public_id: "monitor_lost"}
    # Its shards went to the live monitor, so the account's next subscription lands there.
    assert alive.renew().owned == taken
    assert monitors.owner_for(sub.account_key).worker_id == "alive"
    # Should the killed one come back (a paused VM), it learns it was reaped and starts afresh.
    comeback = killed.renew()
    assert comeback.reaped and comeback.owned == frozenset()


def test_a_monitor_killed_while_logging_out_is_reaped_but_a_stopped_one_is_not(
    lost_to: Callable[..., PushSubscription],
    push_service: PushService,
    fleet_prefix: str,
) -> None:
    for worker_id, state in (("cut-short", MonitorState.STOPPING), ("done", MonitorState.STOPPED)):
        monitor = _monitor(worker_id, beat_ago=600)
        monitor.state = state
        monitor.save()
    left = lost_to("cut-short", "a")

    assert monitors.reap() == {"cut-short": 1}

    left.refresh_from_db()
    assert left.status == Status.LOST
    assert _reasons(push_service.wait_for("/r", timeout=10)) == {left.public_id: "monitor_lost"}
    assert MonitorWorker.objects.get(worker_id="done").state == MonitorState.STOPPED
