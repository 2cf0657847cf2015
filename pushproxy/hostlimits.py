"""Per-IMAP-host protection: login token buckets and paced reconnects.

A monitor that logs ten thousand sessions in after a restart, or a reaper that tells the
clients of a lost machine to reconnect, must not look like an attack to one provider's IMAP
server. Two tools, both keyed by the IMAP host name (lower case):

- `take_login(host)`: a token bucket of PUSHPROXY_HOST_LOGINS_PER_SECOND logins per second
  per host with a burst of PUSHPROXY_HOST_LOGIN_BURST, shared by the whole fleet through
  Redis (one Lua script, one round trip), or per process without Redis (`make run`). It
  answers how long to wait before logging in (0 for now); a login that would have to wait
  more than PUSHPROXY_HOST_LOGIN_WAIT seconds is not taken and raises `HostBusy`
  (`imap_host_busy`, 503: the client tries again later). A wait is a reservation, so the
  waiting logins go in the order they asked.
- `reconnect_delays(hosts, ...)`: when a monitor is lost, the countdown of each reconnect
  push, so that no host gets more than `per_second` of them in any second, with jitter.

The cap on poll-mode sessions per host lives in the manager (pushproxy.monitor), which
knows its own sessions; the per-account cap too (the owner is the only one who knows).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence

from django.conf import settings

from pushproxy import fleet

# KEYS[1] the bucket; ARGV rate, burst, max wait (s). Redis TIME is the clock, so the
# monitors' clocks do not matter. Returns the wait in ms (>= 0, reserved) or -1 (refused).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - at) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
  if wait > max_wait then
    return -1
  end
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + math.ceil(max_wait) + 1)
return math.floor(wait * 1000 + 0.5)
"""


class HostBusy(Exception):
    """The host's login bucket is empty for longer than PUSHPROXY_HOST_LOGIN_WAIT."""

    code = "imap_host_busy"


class _LocalBuckets:
    """The same bucket per process (no Redis: one process holds every session)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, host: str, *, rate: float, burst: float, max_wait: float) -> float | None:
        with self._lock:
            now = time.monotonic()
            tokens, at = self._state.get(host, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - at) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            if wait > max_wait:
                return None
            self._state[host] = (tokens - 1, now)
            return wait


_local = _LocalBuckets()


def take_login(host: str) -> float:
    """Seconds to wait before logging in to `host` (the slot is reserved); HostBusy if the
    wait would pass PUSHPROXY_HOST_LOGIN_WAIT. A Redis error refuses too (fail closed: the
    bucket is what keeps a fleet restart from flooding the host)."""
    rate = float(settings.PUSHPROXY_HOST_LOGINS_PER_SECOND)
    burst = float(settings.PUSHPROXY_HOST_LOGIN_BURST)
    max_wait = float(settings.PUSHPROXY_HOST_LOGIN_WAIT)
    host = host.lower()
    if not settings.HAS_REDIS:
        wait = _local.take(host, rate=rate, burst=burst, max_wait=max_wait)
        if wait is None:
            raise HostBusy(host)
        return wait
    try:
        bucket = f"{fleet.prefix()}login:{host}"
        answer = int(fleet.script(_TAKE)(keys=[bucket], args=[rate, burst, max_wait]))
    except Exception as exc:  # redis errors: refuse rather than log in unpaced
        raise HostBusy(host) from exc
    if answer < 0:
        raise HostBusy(host)
    return answer / 1000


def reconnect_delays(
    hosts: Sequence[str], *, per_second: float, jitter: float, rng: random.Random
) -> list[float]:
    """A countdown (s) for each reconnect push, in the order given: the n-th push for a host
    goes out at n / per_second plus up to `jitter` seconds, so that at most about
    `per_second` clients of one host come back in any second."""
    if per_second <= 0:
        raise ValueError("per_second must be positive")
    seen: Counter[str] = Counter()
    delays = []
    for host in hosts:
        key = host.lower()
        delays.append(seen[key] / per_second + rng.uniform(0, jitter))
        seen[key] += 1
    return delays
