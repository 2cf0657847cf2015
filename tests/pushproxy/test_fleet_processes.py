"""The monitor fleet as real processes: two or three `run_push_monitor` sharing one Redis.

Each test starts its own monitors (worker ids and a fleet prefix of its own, 4 s leases
renewed every second, rebalancing in one step) beside the session's push worker, and drives
them through the API, Redis and signals: stable routing, replacement, a shard move, kill -9
with the reaper, SIGTERM (specs/push-proxy.md "Sharding" and "Liveness").
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from pushproxy import fleet, imap
from pushproxy.models import MonitorState, MonitorWorker, PushSubscription, Status
from pushproxy.services import monitors
from pushproxy.tasks import drain
from tests.conftest import need_service
from tests.fakes.imapstub import PASSWORD, ImapStub
from tests.fakes.push_service import PushService
from tests.pushproxy.conftest import (
    Workers,
    _wait_for_line,
    monitor_environment,
    start_monitor,
)

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

LEASE_SECONDS = 4
HEARTBEAT_SECONDS = 1
SHUTDOWN_SECONDS = 8
# The stub's accounts: one account key each (the host, port and mailbox are shared).
USERS = tuple(f"user{n}@example.org" for n in range(200))


@dataclass
class Monitor:
    worker_id: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def queue(self) -> str:
        return monitors.queue_name(self.worker_id)


@dataclass
class Fleet:
    prefix: str
    monitors: list[Monitor]
    stub: ImapStub
    push: PushService
    client: Client

    def subscribe(self, username: str, client_id: str = "phone") -> PushSubscription:
        """POST a subscription for `username` on the stub; it must be logged in (201)."""
        body = {
            "imap": {
                "host": "127.0.0.1",
                "port": self.stub.port,
                "security": "none",
                "username": username,
                "password": PASSWORD,
            },
            "endpoints": {
                "newMail": {"url": self.push.url("/n")},
                "reconnect": {"url": self.push.url("/r")},
            },
            "clientId": client_id,
        }
        answer = self.client.post(
            "/api/v1/push/subscriptions", data=json.dumps(body), content_type="application/json"
        )
        assert answer.status_code == HTTPStatus.CREATED, answer.content
        return PushSubscription.objects.get(public_id=answer.json()["id"])

    def key(self, username: str) -> str:
        return imap.Mailbox("127.0.0.1", self.stub.port, "none", username).account_key

    def accounts(self, per_monitor: int, *among: Monitor) -> dict[str, list[str]]:
        """`per_monitor` user names whose shard each monitor (all, or `among`) holds."""
        chosen: dict[str, list[str]] = {m.worker_id: [] for m in among or self.monitors}
        for username in USERS:
            owner = fleet.owner_of_shard(fleet.shard_of(self.key(username)))
            if owner in chosen and len(chosen[owner]) < per_monitor:
                chosen[owner].append(username)
        assert all(len(names) == per_monitor for names in chosen.values()), chosen
        return chosen


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _settled(count: int) -> bool:
    """`count` live monitors, each holding its fair share of the shards."""
    live = fleet.live_monitors()
    low, high = fleet.SHARDS // count, -(-fleet.SHARDS // count)
    return len(live) == count and all(low <= held <= high for held in live.values())


@pytest.fixture
def start_fleet(
    client: Client,
    push_settings: Any,
    push_workers: Workers | None,
    push_service: PushService,
    transactional_db: None,
    tmp_path: Path,
) -> Iterator[Callable[[int], Fleet]]:
    """start_fleet(n): n monitor processes on a fleet prefix of this test, once they hold
    their fair shares; killed after the test, their Redis keys deleted."""
    if push_workers is None:
        need_service("Redis", "the monitor processes need REDIS_URL")
    prefix = f"test-fleet-{uuid.uuid4().hex[:8]}:"
    push_settings.PUSHPROXY_FLEET_PREFIX = prefix
    push_settings.PUSHPROXY_LEASE_SECONDS = LEASE_SECONDS
    stub = ImapStub(users=USERS).start()
    started: list[Monitor] = []
    env = monitor_environment(
        PUSHPROXY_FLEET_PREFIX=prefix,
        PUSHPROXY_LEASE_SECONDS=str(LEASE_SECONDS),
        PUSHPROXY_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        PUSHPROXY_REBALANCE_STEP=str(fleet.SHARDS),
        PUSHPROXY_SHUTDOWN_SECONDS=str(SHUTDOWN_SECONDS),
        PYTHONUNBUFFERED="1",
    )

    def start(count: int) -> Fleet:
        for _ in range(count):
            worker_id = f"fleet-{uuid.uuid4().hex[:6]}"
            log = tmp_path / f"{worker_id}.log"
            started.append(Monitor(worker_id, start_monitor(worker_id, env, log), log))
        for monitor in started:
            _wait_for_line(monitor.log, "ready.", monitor.process, timeout=60)
        assert _wait(lambda: _settled(count), timeout=20), fleet.live_monitors()
        return Fleet(prefix, list(started), stub, push_service, client)

    yield start
    for monitor in started:
        if monitor.process.poll() is None:
            monitor.process.kill()
    for monitor in started:
        monitor.process.wait(10)
    stub.stop()
    redis = fleet.client()
    leftovers = list(redis.scan_iter(f"{prefix}*", count=1000))
    for monitor in started:
        leftovers += redis.scan_iter(f"*{monitor.queue}*")
    if leftovers:
        redis.delete(*leftovers)


def _sessions_in(monitor: Monitor) -> int:
    """How many sessions the process holds (its drain logs them out and counts them)."""
    result = drain.apply_async(kwargs={"notify": False, "reopen": True}, queue=monitor.queue)
    return int(result.get(timeout=20))


def _move(prefix: str, shard: int, source: str, target: str) -> None:
    """Hand `shard` from `source` to `target` as rebalancing would, and a shard of the
    target's back to the source, so that neither is above its share (no rebalancing undoes
    the move). Each notices at its next renewal."""
    redis = fleet.client()
    spare = min(int(s) for s in redis.smembers(f"{prefix}owned:{target}"))
    lease = LEASE_SECONDS * 1000
    pipe = redis.pipeline(transaction=True)
    for moved, old, new in ((shard, source, target), (spare, target, source)):
        pipe.set(f"{prefix}shard:{moved}", new, px=lease)
        pipe.srem(f"{prefix}owned:{old}", moved)
        pipe.sadd(f"{prefix}owned:{new}", moved)
    pipe.execute()


def _bodies(pushes: list[Any]) -> list[tuple[str, str | None]]:
    return sorted(
        (json.loads(p.body)["subscription"], json.loads(p.body)["reason"]) for p in pushes
    )


def test_each_account_routes_to_its_shards_owner_and_accounts_spread_over_three_monitors(
    start_fleet: Callable[[int], Fleet],
) -> None:
    fleet_ = start_fleet(3)
    chosen = fleet_.accounts(2)  # every monitor holds shards of the first accounts
    for worker_id, usernames in chosen.items():
        for username in usernames:
            key = fleet_.key(username)
            assert {monitors.owner_for(key).worker_id for _ in range(3)} == {worker_id}
            assert fleet_.subscribe(username).monitor == worker_id
    first = fleet_.monitors[0]
    # A second device of the same account meets the first in the same process.
    tablet = fleet_.subscribe(chosen[first.worker_id][0], client_id="tablet")
    assert tablet.monitor == first.worker_id

    assert fleet_.stub.wait_for(lambda: fleet_.stub.idling == 7)
    expected = {m.worker_id: 3 if m is first else 2 for m in fleet_.monitors}
    assert {m.worker_id: _sessions_in(m) for m in fleet_.monitors} == expected


def test_a_second_subscription_for_the_slot_replaces_the_first_in_the_owning_process(
    start_fleet: Callable[[int], Fleet],
) -> None:
    fleet_ = start_fleet(2)
    chosen = fleet_.accounts(1)
    pairs = []
    for monitor in fleet_.monitors:
        [username] = chosen[monitor.worker_id]
        first = fleet_.subscribe(username)
        second = fleet_.subscribe(username)
        assert first.monitor == second.monitor == monitor.worker_id
        pairs.append((first, second))

    stub = fleet_.stub
    assert stub.wait_for(lambda: stub.connections == 2 and stub.logouts == 2)
    assert stub.logins == 4
    for first, second in pairs:
        first.refresh_from_db()
        second.refresh_from_db()
        assert (first.status, second.status) == (Status.REPLACED, Status.ACTIVE)
    assert [_sessions_in(m) for m in fleet_.monitors] == [1, 1]
    assert fleet_.push.wait_for("/r", timeout=1.0) == []  # a replaced session: no push


def test_a_moved_shard_gives_one_new_mail_push_for_one_exists(
    start_fleet: Callable[[int], Fleet],
) -> None:
    fleet_ = start_fleet(2)
    source, target = fleet_.monitors
    [username] = fleet_.accounts(1, source)[source.worker_id]
    first = fleet_.subscribe(username)
    stub = fleet_.stub
    # The old owner is frozen while its shard moves, the app subscribes again (now at the
    # new owner) and new mail arrives: both sessions hear the EXISTS.
    source.process.send_signal(signal.SIGSTOP)
    try:
        _move(fleet_.prefix, fleet.shard_of(first.account_key), source.worker_id, target.worker_id)
        second = fleet_.subscribe(username)
        assert second.monitor == target.worker_id
        assert stub.wait_for(lambda: stub.idling == 2)
        stub.new_mail()
    finally:
        source.process.send_signal(signal.SIGCONT)

    [push] = fleet_.push.wait_for("/n", timeout=10)
    assert json.loads(push.body)["subscription"] == second.public_id
    # The old owner notices the move at its next renewal and logs its session out.
    _wait_for_line(source.log, f"push session {first.public_id} lost: moved", source.process, 10)
    assert stub.wait_for(lambda: stub.connections == 1)
    assert len(fleet_.push.wait_for("/n", count=2, timeout=2.0)) == 1
    assert fleet_.push.to("/r") == []  # the replaced subscription is not told to reconnect
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Status.REPLACED, Status.ACTIVE)


def test_a_killed_monitor_is_reaped_and_each_of_its_apps_told_to_reconnect_once(
    start_fleet: Callable[[int], Fleet],
) -> None:
    fleet_ = start_fleet(2)
    dead, alive = fleet_.monitors
    chosen = fleet_.accounts(2)
    lost = [fleet_.subscribe(u).public_id for u in chosen[dead.worker_id]]
    kept = [fleet_.subscribe(u).public_id for u in chosen[alive.worker_id]]
    assert fleet_.stub.wait_for(lambda: fleet_.stub.idling == 4)

    dead.process.kill()
    dead.process.wait(10)
    reaped: dict[str, int] = {}

    def reap() -> bool:
        reaped.update(monitors.reap())
        return bool(reaped)

    assert _wait(reap, timeout=LEASE_SECONDS + 5)  # once its leases lapse
    assert reaped == {dead.worker_id: 2}
    assert _wait(lambda: fleet.live_monitors() == {alive.worker_id: fleet.SHARDS}, timeout=5)

    pushes = fleet_.push.wait_for("/r", count=2, timeout=10)
    assert _bodies(pushes) == sorted((s, monitors.MONITOR_LOST) for s in lost)
    assert monitors.reap() == {}
    assert len(fleet_.push.wait_for("/r", count=3, timeout=2.0)) == 2
    statuses = dict(PushSubscription.objects.values_list("public_id", "status"))
    assert statuses == {**dict.fromkeys(lost, Status.LOST), **dict.fromkeys(kept, Status.ACTIVE)}
    assert MonitorWorker.objects.get(worker_id=dead.worker_id).state == MonitorState.LOST


def test_sigterm_frees_the_shards_at_once_logs_out_pushes_reconnect_and_exits_in_time(
    start_fleet: Callable[[int], Fleet],
) -> None:
    fleet_ = start_fleet(2)
    leaving, staying = fleet_.monitors
    chosen = fleet_.accounts(2)
    gone = [fleet_.subscribe(u).public_id for u in chosen[leaving.worker_id]]
    kept = [fleet_.subscribe(u).public_id for u in chosen[staying.worker_id]]
    stub = fleet_.stub
    assert stub.wait_for(lambda: stub.idling == 4)
    redis = fleet.client()
    shard_keys = [f"{fleet_.prefix}shard:{n}" for n in range(fleet.SHARDS)]

    stopped = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    # Free well before the 4 s leases could lapse, then taken by the other monitor.
    assert _wait(lambda: leaving.worker_id not in redis.mget(shard_keys), timeout=2.0)
    assert _wait(lambda: fleet.live_monitors() == {staying.worker_id: fleet.SHARDS}, timeout=5)
    assert leaving.process.wait(SHUTDOWN_SECONDS) == 0
    assert time.monotonic() - stopped < SHUTDOWN_SECONDS

    assert stub.wait_for(lambda: stub.connections == 2) and stub.logouts == 2
    pushes = fleet_.push.wait_for("/r", count=2, timeout=10)
    assert _bodies(pushes) == sorted((s, "shutdown") for s in gone)
    assert len(fleet_.push.wait_for("/r", count=3, timeout=1.0)) == 2
    assert MonitorWorker.objects.get(worker_id=leaving.worker_id).state == MonitorState.STOPPED
    active = PushSubscription.objects.filter(status=Status.ACTIVE)
    assert sorted(active.values_list("public_id", flat=True)) == sorted(kept)
