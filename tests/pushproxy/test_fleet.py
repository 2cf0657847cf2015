"""pushproxy.fleet against the real Redis: routing, leases, rebalancing plans and reaping.

Monitors here are `Membership` objects of this process under a prefix of the test's own;
a lapsed monitor is made by moving its entry in `monitors` into the past.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pushproxy import fleet

pytestmark = pytest.mark.services


@pytest.fixture
def prefix(redis_client: Any, settings: Any) -> Iterator[str]:
    """A fleet prefix of this test's own (30 s leases); its keys deleted afterwards."""
    name = f"test-fleet-unit-{uuid.uuid4().hex[:8]}:"
    settings.PUSHPROXY_FLEET_PREFIX = name
    settings.PUSHPROXY_LEASE_SECONDS = 30
    yield name
    leftovers = list(redis_client.scan_iter(f"{name}*", count=1000))
    if leftovers:
        redis_client.delete(*leftovers)


def key_in(shard: int) -> str:
    """An account key (hex) that falls in `shard`."""
    return format(shard, "064x")


def member(worker_id: str) -> fleet.Membership:
    """A live monitor: joined by its first renewal."""
    membership = fleet.Membership(worker_id)
    membership.renew()
    return membership


def lapse(prefix: str, worker_id: str) -> None:
    """The monitor's entry in `monitors` runs out (as after kill -9 and a lease's time)."""
    fleet.client().zadd(f"{prefix}monitors", {worker_id: 1})


def owner(shard: int) -> str | None:
    return fleet.owner_of_shard(shard)


def test_shard_of_is_the_key_modulo_the_shard_count() -> None:
    assert fleet.shard_of(key_in(5)) == 5
    assert fleet.shard_of("f" * 64) == int("f" * 64, 16) % fleet.SHARDS < fleet.SHARDS


def test_route_claims_an_unheld_shard_for_the_least_loaded_monitor_and_keeps_it(
    prefix: str,
) -> None:
    busy, idle = member("busy"), member("idle")
    busy.acquire(10, start=0)
    idle.acquire(5, start=100)

    assert fleet.route(key_in(9_000)) == "idle"
    assert owner(9_000) == "idle"
    assert "9000" in fleet.client().smembers(f"{prefix}owned:idle")
    idle.acquire(20, start=200)  # now the busier one: the account stays where it is
    assert [fleet.route(key_in(9_000)) for _ in range(3)] == ["idle"] * 3
    assert fleet.route(key_in(3)) == "busy"  # a held shard routes to its holder


def test_route_falls_back_to_the_given_monitors_only_when_none_is_live(prefix: str) -> None:
    assert fleet.route(key_in(1)) is None
    assert fleet.route(key_in(1), fallback=["from-db", "other"]) == "from-db"
    assert owner(1) == "from-db"
    member("live")
    assert fleet.route(key_in(2), fallback=["from-db"]) == "live"


def test_renew_keeps_its_shards_and_reports_those_taken_by_another(prefix: str) -> None:
    mine = member("mine")
    mine.acquire(3, start=10)
    redis = fleet.client()
    redis.pexpire(f"{prefix}shard:10", 1_000)
    redis.set(f"{prefix}shard:11", "thief")  # another monitor holds it now
    redis.delete(f"{prefix}shard:12")  # lost by Redis: nobody else took it

    renewal = mine.renew()

    assert renewal == fleet.Renewal(
        reaped=False, owned=frozenset({10, 12}), lost=frozenset({11}), live_monitors=1
    )
    assert mine.owned == {10, 12}
    assert redis.pttl(f"{prefix}shard:10") > 20_000
    assert (owner(11), owner(12)) == ("thief", "mine")
    assert mine.holds(key_in(10)) and not mine.holds(key_in(11))


def test_acquire_takes_only_free_shards_and_release_only_its_own(prefix: str) -> None:
    first, second = member("first"), member("second")
    assert first.acquire(4, start=0) == {0, 1, 2, 3}
    assert second.acquire(2, start=2) == {4, 5}  # 2 and 3 are taken

    assert second.release([4, 0]) == 1  # shard 0 is not second's to give
    assert (owner(0), owner(4), owner(5)) == ("first", None, "second")
    assert second.owned == {5}


def test_leave_frees_every_shard_and_the_monitor_entry(prefix: str) -> None:
    leaving, staying = member("leaving"), member("staying")
    leaving.acquire(3, start=0)
    staying.acquire(1, start=3)

    assert leaving.leave() == 3
    assert [owner(s) for s in range(4)] == [None, None, None, "staying"]
    assert leaving.owned == frozenset()
    assert fleet.live_monitors() == {"staying": 1}


def test_confirm_learns_a_shard_handed_over_in_redis(prefix: str) -> None:
    mine = member("mine")
    assert not mine.confirm(key_in(7))
    fleet.route(key_in(7))  # the API claims it for the only live monitor
    assert not mine.holds(key_in(7))
    assert mine.confirm(key_in(7)) and mine.holds(key_in(7))


def test_plan_takes_up_to_the_fair_share_and_gives_back_the_emptiest_in_steps(
    prefix: str, settings: Any
) -> None:
    settings.PUSHPROXY_REBALANCE_STEP = 3
    old, new = member("old"), member("new")
    assert len(old.acquire(fleet.SHARDS, start=0)) == fleet.SHARDS
    old.renew()
    new.renew()
    assert old.live_monitors == new.live_monitors == 2

    assert new.plan({}) == (fleet.SHARDS // 2, [])
    # Above its share by 8192: three per round, those with the fewest sessions first.
    busy = {0: 4, 1: 1, 2: 0, 3: 7}
    take, give = old.plan(dict.fromkeys(range(4, 10), 5) | busy)
    assert take == 0
    assert give == [2, 10, 11]


def test_plan_is_quiet_within_the_share(prefix: str) -> None:
    a, b, c = member("a"), member("b"), member("c")
    a.acquire(5_461, start=0)
    b.acquire(5_461, start=5_461)
    c.acquire(5_462, start=10_922)
    for monitor in (a, b, c):
        monitor.renew()
        assert monitor.plan({}) == (0, [])


def test_reap_deals_a_lapsed_monitors_shards_to_the_live_ones_in_turn(prefix: str) -> None:
    a, b, dead = member("a"), member("b"), member("dead")
    a.acquire(1, start=0)
    b.acquire(3, start=1)
    dead.acquire(6, start=100)
    redis = fleet.client()
    redis.set(f"{prefix}shard:105", "a")  # claimed by the API after the lapse: left there
    redis.sadd(f"{prefix}owned:a", 105)
    lapse(prefix, "dead")

    assert fleet.reap() == {"dead": 6}

    # Five shards dealt in turn, the least loaded (a: 2, b: 3) first.
    owners = [owner(s) for s in range(100, 106)]
    assert (owners.count("a"), owners.count("b"), owners[-1]) == (4, 2, "a")
    assert fleet.live_monitors() == {"a": 5, "b": 5}
    assert not redis.exists(f"{prefix}owned:dead")
    assert fleet.reap() == {}  # done once


def test_a_reaped_monitor_learns_it_at_its_next_renewal_and_starts_afresh(prefix: str) -> None:
    member("alive")
    dead = member("dead")
    dead.acquire(4, start=0)
    lapse(prefix, "dead")
    fleet.reap()

    renewal = dead.renew()

    assert renewal.reaped and renewal.owned == frozenset()
    assert dead.owned == frozenset()
    assert [owner(s) for s in range(4)] == ["alive"] * 4
    assert set(fleet.live_monitors()) == {"alive", "dead"}  # it is back, with nothing
    assert not dead.renew().reaped  # told once


def test_reap_without_live_monitors_frees_the_shards(prefix: str) -> None:
    dead = member("dead")
    dead.acquire(2, start=0)
    lapse(prefix, "dead")

    assert fleet.reap() == {"dead": 2}
    assert (owner(0), owner(1)) == (None, None)


def test_mark_reaped_makes_the_monitor_start_afresh(prefix: str) -> None:
    stale = member("stale")
    stale.acquire(2, start=0)
    fleet.mark_reaped("stale")
    assert stale.renew().reaped
    assert stale.owned == frozenset()
