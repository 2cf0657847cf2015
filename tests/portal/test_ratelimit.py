"""Rate-limit policies (portal.ratelimit) on a real Redis that goes down and comes back.

RELIABILITY.md check 7: with the cache down, limited endpoints fail closed (503), and do so
at once rather than after the client library's retries; a Redis restart between two
requests costs nothing.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import RequestFactory

from portal import ratelimit

POLICY = ratelimit.Policy(group="tests.ratelimit", rate_setting="SUGGESTION_RATE")


@pytest.fixture
def proxied_cache(settings: Any, redis_proxy: Any) -> Any:
    """The cache as configured (REDIS_CACHE_OPTIONS), reaching Redis through a proxy."""
    settings.RATELIMIT_ENABLE = True
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_proxy.url,
            "KEY_PREFIX": "tests-ratelimit",
            "OPTIONS": django_settings.REDIS_CACHE_OPTIONS,
        }
    }
    return redis_proxy


def request(rf: RequestFactory, ip: str) -> Any:
    return rf.get("/", REMOTE_ADDR=ip)


def new_ip() -> str:
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def test_enforce_counts_on_through_a_redis_restart(rf: RequestFactory, proxied_cache: Any) -> None:
    ip = new_ip()
    ratelimit.enforce(request(rf, ip), POLICY)
    # Redis restarts between two requests: the pooled connection is dead, Redis is up.
    proxied_cache.down()
    proxied_cache.up()

    ratelimit.enforce(request(rf, ip), POLICY)  # one immediate reconnect, no 503


def test_enforce_fails_closed_at_once_while_redis_is_down(
    rf: RequestFactory, proxied_cache: Any
) -> None:
    ip = new_ip()
    ratelimit.enforce(request(rf, ip), POLICY)
    proxied_cache.down()

    started = time.monotonic()
    with pytest.raises(ratelimit.RateLimiterUnavailable):
        ratelimit.enforce(request(rf, ip), POLICY)
    elapsed = time.monotonic() - started
    proxied_cache.up()

    # A refused connection is known at once; redis-py's own default for a client that
    # builds its pool (3 retries, backoff from 1 s) would take seconds.
    assert elapsed < 3.0, elapsed
    ratelimit.enforce(request(rf, ip), POLICY)  # counting again once Redis is back
