"""Which monitor process owns an account, and the monitors' own registration and heartbeat.

One process is enough for this issue: the owner of an account key is picked among the
live monitors by the key's value (stable while the set of monitors is). Shard leases in
Redis and the reaper replace this lookup in the fleet issue; callers only see `owner_for`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from portal.errors import ServiceUnavailable
from pushproxy.models import MonitorState, MonitorWorker

# Without Redis the session manager runs inside the web process (ARCHITECTURE.md).
EMBEDDED = "embedded"


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
    """The monitor that holds (or will hold) the sessions of `account_key`; NoMonitor if none."""
    if not settings.HAS_REDIS:
        return Owner(EMBEDDED, None)
    alive = list(
        MonitorWorker.objects.alive().order_by("worker_id").values_list("worker_id", "queue")
    )
    if not alive:
        raise NoMonitor()
    worker_id, queue = alive[int(account_key[:15], 16) % len(alive)]
    return Owner(worker_id, queue)


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
        },
    )
    return worker


def heartbeat(worker_id: str, *, sessions: int) -> None:
    """Renew the monitor's heartbeat (re-creating its row if it vanished)."""
    updated = MonitorWorker.objects.filter(worker_id=worker_id).update(
        heartbeat_at=timezone.now(), sessions=sessions
    )
    if not updated:
        register(worker_id)


def set_state(worker_id: str, state: str, *, sessions: int | None = None) -> None:
    fields: dict[str, object] = {"state": state, "heartbeat_at": timezone.now()}
    if sessions is not None:
        fields["sessions"] = sessions
    MonitorWorker.objects.filter(worker_id=worker_id).update(**fields)
