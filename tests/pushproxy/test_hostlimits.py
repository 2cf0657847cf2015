"""pushproxy.hostlimits: the per-IMAP-host login bucket (in Redis for the fleet, in memory
without Redis) and the pacing of reconnect pushes after a lost monitor."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from typing import Any

import pytest

from pushproxy import hostlimits


@pytest.fixture
def bucket(settings: Any) -> Any:
    settings.PUSHPROXY_HOST_LOGINS_PER_SECOND = 10
    settings.PUSHPROXY_HOST_LOGIN_BURST = 3
    settings.PUSHPROXY_HOST_LOGIN_WAIT = 0.35
    settings.PUSHPROXY_FLEET_PREFIX = f"test-{uuid.uuid4().hex}:"
    return settings


def _takes_until_busy(host: str, limit: int = 20) -> list[float]:
    waits = []
    for _ in range(limit):
        try:
            waits.append(hostlimits.take_login(host))
        except hostlimits.HostBusy as busy:
            assert busy.code == "imap_host_busy"
            return waits
    raise AssertionError(f"{limit} logins to {host} were all taken")


def _assert_burst_then_paced(waits: list[float]) -> None:
    # A burst of 3 at once, then one every 1/10 s reserved in turn, until the wait would
    # pass 0.35 s: 0.1, 0.2, 0.3 (a few ms of slack for the time between calls).
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert len(waits) == 6, waits
    for index, wait in enumerate(waits[3:], start=1):
        assert index / 10 - 0.03 <= wait <= index / 10 + 0.001, waits


def test_without_redis_a_host_gets_its_burst_then_paced_logins_then_busy(bucket: Any) -> None:
    bucket.HAS_REDIS = False
    host = f"imap-{uuid.uuid4().hex}.example"
    _assert_burst_then_paced(_takes_until_busy(host))
    # The bucket is per host, whatever the case of its name; another host is not affected.
    with pytest.raises(hostlimits.HostBusy):
        hostlimits.take_login(host.upper())
    assert hostlimits.take_login(f"other-{host}") == 0.0


def test_the_fleet_shares_one_bucket_per_host_in_redis(bucket: Any, redis_client: Any) -> None:
    host = f"imap-{uuid.uuid4().hex}.example"
    _assert_burst_then_paced(_takes_until_busy(host))
    assert hostlimits.take_login(f"other-{host}") == 0.0
    key = f"{bucket.PUSHPROXY_FLEET_PREFIX}login:{host}"
    # The bucket forgets itself once it would be full again: ceil(burst / rate) + ceil(wait)
    # + 1 = 3 s here, so idle hosts leave no keys behind.
    assert 0 < redis_client.ttl(key) <= 3
    redis_client.delete(key, f"{bucket.PUSHPROXY_FLEET_PREFIX}login:other-{host}")


def test_a_redis_that_does_not_answer_refuses_the_login(bucket: Any, free_port: int) -> None:
    # Fail closed: an unpaced fleet restart is what the bucket exists to prevent.
    bucket.HAS_REDIS = True
    bucket.REDIS_URL = f"redis://127.0.0.1:{free_port}/0"
    with pytest.raises(hostlimits.HostBusy):
        hostlimits.take_login("imap.example.org")


def _rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - jitter, seeded for a repeatable test


def test_reconnects_are_paced_per_host_with_jitter() -> None:
    hosts = ["imap.a.example"] * 120 + ["IMAP.b.example"] * 30 + ["imap.a.example"] * 30
    delays = hostlimits.reconnect_delays(hosts, per_second=50, jitter=1.0, rng=_rng(7))
    assert len(delays) == len(hosts)
    by_host: dict[str, list[float]] = {"imap.a.example": [], "imap.b.example": []}
    for host, delay in zip(hosts, delays, strict=True):
        by_host[host.lower()].append(delay)
    for host, found in by_host.items():
        for index, delay in enumerate(found):
            assert index / 50 <= delay <= index / 50 + 1.0, (host, index, delay)
        # At most per_second + what the jitter can add from the previous second come back
        # in any one second: never the whole batch at once.
        per_second = Counter(int(delay) for delay in found)
        assert max(per_second.values()) <= 100
    # Another host's clients are not queued behind the first host's.
    assert min(by_host["imap.b.example"]) < 1.0
    assert max(by_host["imap.a.example"]) >= 149 / 50


def test_reconnect_pacing_without_jitter_is_exact_and_refuses_a_zero_rate() -> None:
    delays = hostlimits.reconnect_delays(["h"] * 5, per_second=2, jitter=0.0, rng=_rng(1))
    assert delays == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="positive"):
        hostlimits.reconnect_delays(["h"], per_second=0, jitter=0.0, rng=_rng(1))
