"""Which monitor process owns an account; the monitors' registration, heartbeat and reaping.

With Redis the owner is whoever leases the account's shard (pushproxy.fleet): stable for as
long as the lease holds, so one account's sessions always meet in one process. Without Redis
the web process itself holds the sessions (`EMBEDDED`). The database keeps one row per
monitor (MonitorWorker) for the admin and as the fallback list of live monitors when Redis
has lost the fleet's keys.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.errors import ServiceUnavailable
from pushproxy import fleet, hostlimits
from pushproxy.models import MonitorState, MonitorWorker, PushSubscription, Status
from pushproxy.services.delivery import RECONNECT, enqueue_push

logger = logging.getLogger(__name__)

# Without Redis the session manager runs inside the web process (ARCHITECTURE.md).
EMBEDDED = "embedded"
# The reconnect reason for the subscriptions of a monitor that died.
MONITOR_LOST = "monitor_lost"


class NoMonitor(ServiceUnavailable):
    code = "push_unavailable"
    default_message = "No push monitor is running; try again shortly."


@dataclass(frozen=True)
class Owner:
    worker_id: str
    queue: str | None  # None: this very process (embedded mode)


def queue_name(worker_id: str) -> str:
    return f"idle.{worker_id}"


def owner_for(account_key: str) -> Owner:
    """The monitor that holds (or will hold) the sessions of `account_key`; NoMonitor if none.

    The shard's lease holder; an unheld shard is claimed for the least-loaded live monitor
    (or, when Redis knows none, for one whose database heartbeat is recent)."""
    if not settings.HAS_REDIS:
        return Owner(EMBEDDED, None)
    try:
        worker = fleet.route(account_key, fallback=_fallback(account_key))
    except Exception as exc:  # Redis down: no routing, no hand-off either
        logger.warning("routing a push subscription failed: %s", type(exc).__name__)
        raise NoMonitor() from None
    if worker is None:
        raise NoMonitor()
    return Owner(worker, queue_name(worker))


def _fallback(account_key: str) -> list[str]:
    """Monitors alive by their database heartbeat, the account's pick first (only used when
    Redis has no live monitor entry, e.g. right after a Redis restart)."""
    alive = list(MonitorWorker.objects.alive().values_list("worker_id", flat=True))
    if not alive:
        return []
    first = fleet.shard_of(account_key) % len(alive)
    return alive[first:] + alive[:first]


def register(worker_id: str) -> MonitorWorker:
    """Announce a starting monitor (or restart one under the same id)."""
    worker, _created = MonitorWorker.objects.update_or_create(
        worker_id=worker_id,
        defaults={
            "queue": queue_name(worker_id),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "state": MonitorState.RUNNING,
            "started_at": timezone.now(),
            "heartbeat_at": timezone.now(),
            "sessions": 0,
            "shards": 0,
        },
    )
    return worker


def heartbeat(worker_id: str, *, sessions: int, shards: int) -> None:
    """Renew the monitor's database heartbeat (re-creating its row if it vanished)."""
    updated = MonitorWorker.objects.filter(worker_id=worker_id).update(
        heartbeat_at=timezone.now(), sessions=sessions, shards=shards, state=MonitorState.RUNNING
    )
    if not updated:
        register(worker_id)
        heartbeat(worker_id, sessions=sessions, shards=shards)


def set_state(worker_id: str, state: str, *, sessions: int | None = None) -> None:
    fields: dict[str, object] = {"state": state, "heartbeat_at": timezone.now()}
    if sessions is not None:
        fields["sessions"] = sessions
    if state == MonitorState.STOPPED:
        fields["shards"] = 0
    MonitorWorker.objects.filter(worker_id=worker_id).update(**fields)


def reap() -> dict[str, int]:
    """The lease reaper (Celery beat, every PUSHPROXY_REAP_SECONDS): dead monitors -> the
    reconnect pushes queued for their subscriptions.

    Dead: its leases lapsed in Redis (the shards are dealt to the live monitors there), or
    its database heartbeat is older than PUSHPROXY_MONITOR_STALE_SECONDS while it still
    counts as running (Redis lost the fleet's keys) or stopping (killed while logging out:
    its shutdown is bounded by PUSHPROXY_SHUTDOWN_SECONDS, well below that age). Its active
    subscriptions become `lost` in one UPDATE and each gets a reconnect push (reason
    `monitor_lost`), paced per IMAP host (hostlimits.reconnect_delays) so a lost machine
    does not make a provider's clients all log in again in the same second. Pending ones
    are left to `expire_pending`.
    """
    dead: set[str] = set()
    live: set[str] = set()
    if settings.HAS_REDIS:
        dead = set(fleet.reap())
        live = set(fleet.live_monitors())
    horizon = timezone.now() - timedelta(seconds=settings.PUSHPROXY_MONITOR_STALE_SECONDS)
    stale = set(
        MonitorWorker.objects.filter(
            state__in=[MonitorState.RUNNING, MonitorState.STOPPING], heartbeat_at__lt=horizon
        ).values_list("worker_id", flat=True)
    )
    for worker in stale - live - dead:
        if settings.HAS_REDIS:
            fleet.mark_reaped(worker)  # should it come back, it starts afresh
        dead.add(worker)
    return {worker: _reap_one(worker) for worker in sorted(dead)}


def _reap_one(worker: str) -> int:
    event = uuid.uuid4().hex  # one batch: the subscription id tells the pushes apart
    with transaction.atomic():
        MonitorWorker.objects.filter(worker_id=worker).exclude(state=MonitorState.STOPPED).update(
            state=MonitorState.LOST, sessions=0, shards=0
        )
        count = PushSubscription.objects.filter(monitor=worker, status=Status.ACTIVE).update(
            status=Status.LOST, error=MONITOR_LOST, final_event=event, ended_at=timezone.now()
        )
        if count:
            lost = list(
                PushSubscription.objects.filter(final_event=event)
                .order_by("pk")
                .values_list("public_id", "pk", "host")
            )
            delays = hostlimits.reconnect_delays(
                [host for _public_id, _pk, host in lost],
                per_second=settings.PUSHPROXY_RECONNECTS_PER_HOST_PER_SECOND,
                jitter=1.0,
                rng=random.Random(),  # noqa: S311 - jitter, not a secret
            )
            for (public_id, pk, _host), delay in zip(lost, delays, strict=True):
                transaction.on_commit(
                    functools.partial(
                        enqueue_push,
                        subscription=public_id,
                        generation=pk,
                        kind=RECONNECT,
                        reason=MONITOR_LOST,
                        event=event,
                        countdown=delay,
                    )
                )
    logger.warning("push monitor %s reaped: %d subscriptions told to reconnect", worker, count)
    return count


@dataclass(frozen=True)
class FleetSummary:
    """What the admin's monitor list shows above the rows: the fleet's capacity now."""

    embedded: bool  # no Redis: the web process holds the sessions
    redis_error: str  # the fleet's keys could not be read ("" when they could)
    leases: dict[str, int]  # live monitors (by their leases) -> shards held
    sessions: int  # sessions held by running monitors (their last heartbeats)
    active: int  # active subscriptions
    capacity: int  # sessions the live monitors may hold (PUSHPROXY_MAX_SESSIONS each)

    @property
    def shards_held(self) -> int:
        return sum(self.leases.values())

    @property
    def shards_free(self) -> int:
        return fleet.SHARDS - self.shards_held

    @property
    def shards_total(self) -> int:
        return fleet.SHARDS


def fleet_summary() -> FleetSummary:
    running = MonitorWorker.objects.filter(state=MonitorState.RUNNING)
    active = PushSubscription.objects.filter(status=Status.ACTIVE).count()
    if not settings.HAS_REDIS:
        from pushproxy import monitor  # the embedded manager lives in this process

        sessions = monitor.get_manager().count()
        return FleetSummary(True, "", {}, sessions, active, settings.PUSHPROXY_MAX_SESSIONS)
    leases: dict[str, int] = {}
    error = ""
    try:
        leases = fleet.live_monitors()
    except Exception as exc:  # the admin page still shows the database's view
        error = type(exc).__name__
    sessions = sum(running.values_list("sessions", flat=True))
    capacity = len(leases) * settings.PUSHPROXY_MAX_SESSIONS
    return FleetSummary(False, error, leases, sessions, active, capacity)
