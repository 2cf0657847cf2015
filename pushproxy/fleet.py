"""The monitor fleet in Redis: 16,384 shard leases, routing, rebalancing and the reaper's part.

specs/push-proxy.md "Sharding": an account key maps to one of `SHARDS` virtual shards
(`shard_of`); each shard is leased to one monitor process (`<prefix>shard:<n>` = worker id,
`SET NX PX`). The API routes a `watch` to the owner of the account's shard (`route`), so the
same account always lands in the same process while its lease holds. Keys (prefix
PUSHPROXY_FLEET_PREFIX, default `pushproxy:`):

- `shard:<n>`: the owner's worker id, expiring after the lease (PUSHPROXY_LEASE_SECONDS);
- `owned:<worker>`: the shards a monitor holds (a set: what it renews; what the reaper hands on);
- `monitors`: a sorted set, worker id -> when its leases run out (ms, Redis's clock);
- `reaped:<worker>`: set by the reaper: "your subscriptions were told to reconnect".

Each monitor renews all its leases and its `monitors` entry in one Lua call every
PUSHPROXY_HEARTBEAT_SECONDS (`Membership.renew`): batched per process, never per session.
New monitors take free shards up to their fair share (`acquire`); a monitor above its share
gives shards back, PUSHPROXY_REBALANCE_STEP per renewal, empty ones first (`release`), so
shards move gradually. A shard nobody holds (a remainder, a lapsed lease) is claimed for the
least-loaded live monitor by the first request that needs it (`route`). The reaper
(`reap`) takes a dead monitor's shards (its entry in `monitors` lapsed) and hands them to
the live ones. Redis's clock decides every expiry, so monitors on several machines need no
synchronised clocks. Scripts address keys by name (one Redis server, not Redis Cluster).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

SHARDS = 16_384

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The least-loaded live monitor (fewest owned shards), or false. Uses p, now.
_LEAST_LOADED = """
local function least_loaded(p, now)
  local best, fewest = false, -1
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', p .. 'monitors', '(' .. now, '+inf')) do
    local n = redis.call('SCARD', p .. 'owned:' .. w)
    if fewest < 0 or n < fewest then best, fewest = w, n end
  end
  return best
end
"""

# ARGV: prefix, worker, lease ms, known shards... -> {status, added, lost, live monitors}.
# status -1: the reaper took this monitor's shards (it starts afresh). A known shard whose
# key vanished (a Redis restart, a flush) is taken back if nobody else took it. `added`:
# shards held that the monitor did not list (claimed for it by the API or the reaper);
# `lost`: listed ones another monitor holds now. Only the changes travel back, so a monitor
# holding thousands of shards parses a few, not all, every renewal.
_RENEW = (
    _NOW
    + """
local p, w, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('DEL', p .. 'reaped:' .. w) == 1 then
  redis.call('DEL', p .. 'owned:' .. w)
  redis.call('ZADD', p .. 'monitors', now + lease, w)
  return {-1, {}, {}, redis.call('ZCOUNT', p .. 'monitors', '(' .. now, '+inf')}
end
local ownedkey = p .. 'owned:' .. w
local known = {}
for i = 4, #ARGV do
  redis.call('SADD', ownedkey, ARGV[i])
  known[ARGV[i]] = true
end
local added, lost = {}, {}
for _, s in ipairs(redis.call('SMEMBERS', ownedkey)) do
  local k = p .. 'shard:' .. s
  local v = redis.call('GET', k)
  if v == w or not v then
    redis.call('SET', k, w, 'PX', lease)
    if not known[s] then added[#added + 1] = s end
  else
    redis.call('SREM', ownedkey, s)
    lost[#lost + 1] = s
  end
end
redis.call('ZADD', p .. 'monitors', now + lease, w)
return {1, added, lost, redis.call('ZCOUNT', p .. 'monitors', '(' .. now, '+inf')}
"""
)

# ARGV: prefix, worker, lease ms, how many, first shard to look at -> the shards taken.
_ACQUIRE = """
local p, w, lease, want, start = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5])
local got = {}
for i = 0, SHARDS - 1 do
  if #got >= want then break end
  local s = (start + i) % SHARDS
  if redis.call('SET', p .. 'shard:' .. s, w, 'NX', 'PX', lease) then
    redis.call('SADD', p .. 'owned:' .. w, s)
    got[#got + 1] = s
  end
end
return got
""".replace("SHARDS", str(SHARDS))

# ARGV: prefix, worker, shards... -> how many were given up.
_RELEASE = """
local p, w = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local k = p .. 'shard:' .. ARGV[i]
  if redis.call('GET', k) == w then redis.call('DEL', k); n = n + 1 end
  redis.call('SREM', p .. 'owned:' .. w, ARGV[i])
end
return n
"""

# ARGV: prefix, worker -> shards given up. The monitor leaves the fleet (SIGTERM).
_LEAVE = """
local p, w = ARGV[1], ARGV[2]
redis.call('ZREM', p .. 'monitors', w)
local n = 0
for _, s in ipairs(redis.call('SMEMBERS', p .. 'owned:' .. w)) do
  local k = p .. 'shard:' .. s
  if redis.call('GET', k) == w then redis.call('DEL', k); n = n + 1 end
end
redis.call('DEL', p .. 'owned:' .. w)
return n
"""

# ARGV: prefix, shard, lease ms, fallback workers... -> the shard's owner, or false.
# Unowned: claimed for the least-loaded live monitor, else (no live entry at all, e.g. just
# after a Redis restart) for the first fallback worker (monitors alive by the database).
_ROUTE = (
    _NOW
    + _LEAST_LOADED
    + """
local p, s, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local k = p .. 'shard:' .. s
local owner = redis.call('GET', k)
if owner then return owner end
local w = least_loaded(p, now)
if not w then w = ARGV[4] end
if not w then return false end
redis.call('SET', k, w, 'PX', lease)
redis.call('SADD', p .. 'owned:' .. w, s)
return w
"""
)

# ARGV: prefix, lease ms -> {reaped worker, shard count, ...}. A monitor whose entry in
# `monitors` lapsed is dead: its shards are dealt out to the live monitors, the least loaded
# first, and `reaped:<worker>` tells it so should it come back.
_REAP = (
    _NOW
    + """
local p, lease = ARGV[1], tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', p .. 'monitors', '-inf', now)
if #dead == 0 then return {} end
for _, w in ipairs(dead) do redis.call('ZREM', p .. 'monitors', w) end
local live = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', p .. 'monitors', '(' .. now, '+inf')) do
  live[#live + 1] = {w, redis.call('SCARD', p .. 'owned:' .. w)}
end
table.sort(live, function(a, b) return a[2] < b[2] end)
local out, turn = {}, 0
for _, gone in ipairs(dead) do
  redis.call('SET', p .. 'reaped:' .. gone, '1', 'EX', 86400)
  local shards = redis.call('SMEMBERS', p .. 'owned:' .. gone)
  redis.call('DEL', p .. 'owned:' .. gone)
  for _, s in ipairs(shards) do
    local k = p .. 'shard:' .. s
    local v = redis.call('GET', k)
    if not v or v == gone then
      if #live > 0 then
        local w = live[(turn % #live) + 1][1]
        turn = turn + 1
        redis.call('SET', k, w, 'PX', lease)
        redis.call('SADD', p .. 'owned:' .. w, s)
      else
        redis.call('DEL', k)
      end
    end
  end
  out[#out + 1] = gone
  out[#out + 1] = #shards
end
return out
"""
)


def shard_of(account_key: str) -> int:
    """The account key (hex SHA-256 or HMAC) modulo SHARDS."""
    return int(account_key, 16) % SHARDS


def prefix() -> str:
    return str(settings.PUSHPROXY_FLEET_PREFIX)


def lease_ms() -> int:
    return int(settings.PUSHPROXY_LEASE_SECONDS * 1000)


@functools.cache
def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True
    )


def client() -> Any:
    """This process's Redis client for the fleet (REDIS_URL)."""
    return _client(settings.REDIS_URL)


@functools.cache
def _registered(source: str, url: str) -> Any:
    return _client(url).register_script(source)


def script(source: str) -> Any:
    """A Lua script on this process's fleet Redis, sent once and then called by its SHA."""
    return _registered(source, settings.REDIS_URL)


def _run(source: str, *args: object) -> Any:
    return script(source)(args=[prefix(), *args])


# --- the API's side -------------------------------------------------------------------------


def route(account_key: str, *, fallback: Iterable[str] = ()) -> str | None:
    """The worker id owning the account's shard, claiming it for the least-loaded live
    monitor (else the first of `fallback`) if nobody holds it; None if there is no monitor."""
    owner = _run(_ROUTE, shard_of(account_key), lease_ms(), *fallback)
    return str(owner) if owner else None


def owner_of_shard(shard: int) -> str | None:
    value = client().get(f"{prefix()}shard:{shard}")
    return str(value) if value else None


# --- a monitor's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Renewal:
    reaped: bool
    owned: frozenset[int]
    lost: frozenset[int]
    live_monitors: int


class Membership:
    """One monitor process in the fleet: the shards it holds (kept in memory as well, so a
    Redis restart loses nothing), renewal, rebalancing and leaving."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        self.live_monitors = 1

    @property
    def owned(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._owned)

    def holds(self, account_key: str) -> bool:
        """In memory only (the session manager asks under its lock)."""
        return shard_of(account_key) in self._owned

    def confirm(self, account_key: str) -> bool:
        """Holds the account's shard: in memory, or newly handed to us in Redis (a claim by
        the API or the reaper that the next renewal would have shown)."""
        shard = shard_of(account_key)
        if shard in self._owned:
            return True
        if owner_of_shard(shard) == self.worker_id:
            with self._lock:
                self._owned.add(shard)
            return True
        return False

    def renew(self) -> Renewal:
        """Renew every lease held (one script call); what is held and what was lost."""
        with self._lock:
            known = sorted(self._owned)
        status, added, lost, live = _run(_RENEW, self.worker_id, lease_ms(), *known)
        reaped = int(status) < 0
        gone = frozenset(int(s) for s in lost)
        renewal = Renewal(
            reaped=reaped,
            owned=frozenset()
            if reaped
            else (frozenset(known) - gone) | frozenset(int(s) for s in added),
            lost=gone,
            live_monitors=max(1, int(live)),
        )
        with self._lock:
            # Shards confirmed while the script ran (a claim by the API that the script's
            # snapshot may predate) stay: the next renewal checks them like the rest.
            self._owned = set(renewal.owned) | (self._owned - set(known))
        self.live_monitors = renewal.live_monitors
        return renewal

    def acquire(self, count: int, *, start: int) -> frozenset[int]:
        got = frozenset(
            int(s) for s in _run(_ACQUIRE, self.worker_id, lease_ms(), count, start % SHARDS)
        )
        with self._lock:
            self._owned |= got
        return got

    def release(self, shards: Iterable[int]) -> int:
        chosen = sorted(shards)
        if not chosen:
            return 0
        with self._lock:
            self._owned -= set(chosen)
        return int(_run(_RELEASE, self.worker_id, *chosen))

    def leave(self) -> int:
        """Leave the fleet: no entry in `monitors`, every shard free for the others."""
        with self._lock:
            self._owned.clear()
        return int(_run(_LEAVE, self.worker_id))

    def plan(self, sessions_per_shard: dict[int, int]) -> tuple[int, list[int]]:
        """(shards to take, shards to give up) to approach the fair share of SHARDS among
        the live monitors: take up to floor(share), give up what is above ceil(share),
        at most PUSHPROXY_REBALANCE_STEP per call, the emptiest first."""
        live = self.live_monitors
        low, high = SHARDS // live, -(-SHARDS // live)
        with self._lock:
            owned = sorted(self._owned)
        if len(owned) < low:
            return low - len(owned), []
        excess = min(len(owned) - high, settings.PUSHPROXY_REBALANCE_STEP)
        if excess <= 0:
            return 0, []
        owned.sort(key=lambda shard: (sessions_per_shard.get(shard, 0), shard))
        return 0, owned[:excess]


# This process's membership (run_push_monitor joins; None elsewhere).
_member: Membership | None = None


def join(worker_id: str) -> Membership:
    global _member
    _member = Membership(worker_id)
    return _member


def member() -> Membership | None:
    return _member


def leave_process() -> None:
    global _member
    _member = None


_source_turn = itertools.count()


def source_addresses() -> list[str]:
    """PUSHPROXY_SOURCE_ADDRESSES rotated by one per call: sessions spread over the local
    addresses in turn (each holds ~28k connections to one server address and port)."""
    sources = list(settings.PUSHPROXY_SOURCE_ADDRESSES)
    if not sources:
        return []
    turn = next(_source_turn) % len(sources)
    return sources[turn:] + sources[:turn]


# --- the reaper's part ----------------------------------------------------------------------


def reap() -> dict[str, int]:
    """Monitors whose leases lapsed -> the number of shards each held (now handed on)."""
    flat = _run(_REAP, lease_ms())
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def mark_reaped(worker_id: str) -> None:
    """The reaper's note for a monitor it declared dead by its database heartbeat alone."""
    client().set(f"{prefix()}reaped:{worker_id}", "1", ex=86400)


def live_monitors() -> dict[str, int]:
    """Live monitors (by their leases) -> shards each holds (for the admin and routing)."""
    redis = client()
    now_ms = _redis_now_ms(redis)
    workers = redis.zrangebyscore(f"{prefix()}monitors", f"({now_ms}", "+inf")
    pipe = redis.pipeline(transaction=False)
    for worker in workers:
        pipe.scard(f"{prefix()}owned:{worker}")
    return {str(w): int(n) for w, n in zip(workers, pipe.execute(), strict=True)}


def _redis_now_ms(redis: Any) -> int:
    seconds, micros = redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
