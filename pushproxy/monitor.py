"""The IDLE session manager: logged-in IMAP sessions, each watched by its own greenlet.

Sessions live here, outside any Celery task (specs/push-proxy.md, "Why sessions live outside
tasks"): a `watch` task logs in, hands the session to `Manager.adopt` and returns. In
`run_push_monitor` the process is gevent-patched and every session is a greenlet; without
Redis (`make run`) the same manager runs in the web process and sessions are OS threads
(`PUSHPROXY_MAX_SESSIONS` bounds both).

Per session (`_watch`): IDLE where the server announces it, re-issued every
`idle_seconds` (DONE must be answered within `command_timeout`), else NOOP every
`poll_seconds`. An EXISTS above the last count seen is new mail; EXISTS arriving within
`coalesce_gap` of each other (for at most `coalesce_max`) are pushed once. A BYE, EOF, reset,
timeout or protocol error ends the session with a reconnect push. Sessions never touch the
database: they report to the `Sink` (services.delivery puts a job on the `push` queue).

Replace, never add: the registry holds one session per slot (account key, clientId), the
one with the highest generation (the subscription's id). A newer session is adopted first,
then the older one is logged out without a reconnect push; an older one arriving late is
refused ("superseded"). `stop` logs out without a push (DELETE); `drain` logs everything out,
pushing reconnect only when asked (SIGTERM).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.db import connections

from pushproxy import imap

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """Where sessions report. Called from the session's own thread or greenlet."""

    def new_mail(self, *, subscription: str, generation: int, exists: int, event: str) -> None: ...

    def lost(self, *, subscription: str, generation: int, reason: str, event: str) -> None: ...


@dataclass(frozen=True)
class Timing:
    idle_seconds: float
    poll_seconds: float
    command_timeout: float
    coalesce_gap: float
    coalesce_max: float = 1.0
    logout_timeout: float = 2.0

    @classmethod
    def from_settings(cls) -> Timing:
        return cls(
            idle_seconds=settings.PUSHPROXY_IDLE_SECONDS,
            poll_seconds=settings.PUSHPROXY_POLL_SECONDS,
            command_timeout=settings.PUSHPROXY_COMMAND_TIMEOUT,
            coalesce_gap=settings.PUSHPROXY_COALESCE_SECONDS,
        )


@dataclass(eq=False)
class Watched:
    """One adopted session and what its pushes must name."""

    subscription: str
    generation: int
    account_key: str
    client_id: str
    session: imap.Session
    host: str = ""  # the IMAP host (lower case): the poll-mode cap counts per host
    # Set when the manager ends the session: then no reconnect push, unless `notify`.
    stopping: str = ""
    notify: bool = False
    runner: Any = field(default=None, repr=False)

    @property
    def slot(self) -> tuple[str, str]:
        return (self.account_key, self.client_id)

    @property
    def mode(self) -> str:
        return "idle" if self.session.idle else "poll"


class HeapFreezer:
    """`gc.freeze()` once the sessions grew by `step` since the last freeze (a wave of
    logins): the long-lived session objects leave the collector's generations, so its pauses
    no longer grow with the number of sessions (specs/push-proxy.md, "Scale": unfrozen, they
    showed as 300-450 ms p99 spikes). Objects of sessions that end later are still freed by
    reference counting; only cyclic garbage among frozen objects waits for `gc.unfreeze`."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._baseline = 0

    def after(self, sessions: int) -> bool:
        """Called with the current session count (each heartbeat); True if it froze."""
        self._baseline = min(self._baseline, sessions)
        if sessions - self._baseline < self.step:
            return False
        gc.collect()
        gc.freeze()
        self._baseline = sessions
        return True


class Refusal(Exception):
    """The manager will not take this session: superseded, too_many_subscriptions, full,
    draining, moved (the shard is not this process's), poll_cap_reached (this process has
    `max_poll_per_host` NOOP-polled sessions on the host already)."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(code)


def _spawn_thread(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def default_spawn() -> Callable[[Callable[[], None], str], Any]:
    """gevent.spawn in a patched process (a greenlet is ~10x cheaper than a patched Thread),
    else an OS thread."""
    if in_greenlets():
        import gevent

        return lambda target, name: gevent.spawn(target)
    return _spawn_thread


def in_greenlets() -> bool:
    """True in a gevent-patched process (`run_push_monitor`)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def release_db() -> None:
    """After database use in a greenlet: close its connection. Each greenlet has its own
    (Django's connections are greenlet-local once patched); left open they pile up until
    garbage collection. In threads (no gevent) the connection stays for reuse."""
    if in_greenlets():
        connections.close_all()


class Manager:
    """The registry of watched sessions in this process."""

    def __init__(
        self,
        *,
        sink: Sink,
        timing: Timing,
        max_sessions: int,
        max_per_account: int,
        spawn: Callable[[Callable[[], None], str], Any] | None = None,
        close_db: bool = False,
        max_poll_per_host: int = 0,
    ) -> None:
        self.sink = sink
        self.timing = timing
        self.max_sessions = max_sessions
        self.max_per_account = max_per_account
        self._spawn = spawn or default_spawn()
        # Session threads that reach the database (eager delivery without Redis) close
        # their connections when they end.
        self._close_db = close_db
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], Watched] = {}
        self._by_subscription: dict[str, Watched] = {}
        self._per_account: dict[str, set[str]] = {}
        # Poll-mode sessions per IMAP host; capped at max_poll_per_host (0: no cap).
        self.max_poll_per_host = max_poll_per_host
        self._poll_hosts: Counter[str] = Counter()
        self.accepting = True
        # In the fleet: whether this process holds the account key's shard (memory only,
        # asked under the lock); None in the embedded mode, where it holds everything.
        self.owns: Callable[[str], bool] | None = None

    # --- what tasks call ------------------------------------------------------------------

    def check(self, *, account_key: str, client_id: str, generation: int) -> None:
        """Refusal now if adopting such a session later would be refused (saves a login)."""
        with self._lock:
            self._refusal(account_key, client_id, generation)

    def adopt(self, watched: Watched) -> None:
        """Take over a logged-in session and watch it; Refusal (session untouched) if not.

        An older session of the same slot is logged out afterwards, without a push.
        """
        with self._lock:
            self._refusal(watched.account_key, watched.client_id, watched.generation)
            old = self._slots.get(watched.slot)
            if not watched.session.idle and self.max_poll_per_host:
                polled = self._poll_hosts[watched.host]
                if old is not None and old.mode == "poll" and old.host == watched.host:
                    polled -= 1  # replacing one of them
                if polled >= self.max_poll_per_host:
                    raise Refusal("poll_cap_reached")
            if old is not None:
                self._count_poll(old, -1)
            self._count_poll(watched, +1)
            self._slots[watched.slot] = watched
            self._by_subscription[watched.subscription] = watched
            self._per_account.setdefault(watched.account_key, set()).add(watched.client_id)
            if old is not None:
                self._by_subscription.pop(old.subscription, None)
        watched.runner = self._spawn(lambda: self._run(watched), f"imap-{watched.subscription}")
        if old is not None:
            self._end(old, reason="replaced", notify=False)

    def stop(self, subscription: str, *, reason: str = "stopped", wait: float = 0.0) -> bool:
        """Log the session of `subscription` out without a push; False if there is none."""
        with self._lock:
            watched = self._by_subscription.get(subscription)
            if watched is not None:
                self._forget(watched)
        if watched is None:
            return False
        self._end(watched, reason=reason, notify=False)
        if wait:
            _join(watched.runner, wait)
        return True

    def end_where(self, predicate: Callable[[Watched], bool], *, reason: str, notify: bool) -> int:
        """Log out the sessions `predicate` picks (a shard given up or lost: reconnect
        pushed if `notify`); the count. Does not wait for them."""
        with self._lock:
            chosen = [watched for watched in self._slots.values() if predicate(watched)]
            for watched in chosen:
                self._forget(watched)
        for watched in chosen:
            self._end(watched, reason=reason, notify=notify)
        return len(chosen)

    def drain(self, *, reason: str, notify: bool, wait: float, reopen: bool = False) -> int:
        """Stop accepting, log every session out (pushing `reason` if `notify`); the count.

        `reopen`: accept new sessions again afterwards (an operator's or a test's reset)."""
        self.accepting = False
        with self._lock:
            everything = list(self._slots.values())
            for watched in everything:
                self._forget(watched)
        for watched in everything:
            self._end(watched, reason=reason, notify=notify)
        deadline = time.monotonic() + wait
        for watched in everything:
            _join(watched.runner, max(0.0, deadline - time.monotonic()))
        self.accepting = reopen
        return len(everything)

    def count(self) -> int:
        return len(self._slots)

    def sessions(self) -> list[Watched]:
        with self._lock:
            return list(self._slots.values())

    def holds(self, subscription: str) -> bool:
        return subscription in self._by_subscription

    # --- registry ---------------------------------------------------------------------------

    def _refusal(self, account_key: str, client_id: str, generation: int) -> None:
        if not self.accepting:
            raise Refusal("draining")
        if self.owns is not None and not self.owns(account_key):
            raise Refusal("moved")  # the account's shard is (now) another monitor's
        current = self._slots.get((account_key, client_id))
        if current is not None:
            if current.generation >= generation:
                raise Refusal("superseded")
            return  # a replacement: the slot is counted already
        if len(self._per_account.get(account_key, ())) >= self.max_per_account:
            raise Refusal("too_many_subscriptions")
        if len(self._slots) >= self.max_sessions:
            raise Refusal("full")

    def _forget(self, watched: Watched) -> None:
        """Drop `watched` from the registry if it is still the slot's session (lock held)."""
        if self._slots.get(watched.slot) is watched:
            del self._slots[watched.slot]
            self._count_poll(watched, -1)
            clients = self._per_account.get(watched.account_key)
            if clients is not None:
                clients.discard(watched.client_id)
                if not clients:
                    del self._per_account[watched.account_key]
        if self._by_subscription.get(watched.subscription) is watched:
            del self._by_subscription[watched.subscription]

    def _count_poll(self, watched: Watched, step: int) -> None:
        if watched.mode == "poll":
            self._poll_hosts[watched.host] += step
            if self._poll_hosts[watched.host] <= 0:
                del self._poll_hosts[watched.host]

    def polled_on(self, host: str) -> int:
        """Poll-mode sessions this process keeps on `host`."""
        return self._poll_hosts.get(host, 0)

    def _end(self, watched: Watched, *, reason: str, notify: bool) -> None:
        watched.stopping = reason
        watched.notify = notify
        watched.session.interrupt()

    # --- one session ------------------------------------------------------------------------

    def _run(self, watched: Watched) -> None:
        reason = "error"
        try:
            if watched.session.idle:
                self._watch_idle(watched)
            else:
                self._watch_poll(watched)
        except imap.SessionLost as lost:
            reason = lost.reason
        except Exception:
            logger.exception("push session %s failed", watched.subscription)
        finally:
            if watched.stopping:
                watched.session.logout(self.timing.logout_timeout)
                reason = watched.stopping
            else:
                watched.session.close()
            with self._lock:
                self._forget(watched)
            if not watched.stopping or watched.notify:
                logger.info("push session %s lost: %s", watched.subscription, reason)
                self._report(
                    lambda: self.sink.lost(
                        subscription=watched.subscription,
                        generation=watched.generation,
                        reason=reason,
                        event=uuid.uuid4().hex,
                    )
                )
            if self._close_db:
                connections.close_all()

    def _report(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:
            logger.exception("push sink failed")

    def _new_mail(self, watched: Watched) -> None:
        self._report(
            lambda: self.sink.new_mail(
                subscription=watched.subscription,
                generation=watched.generation,
                exists=watched.session.exists,
                event=uuid.uuid4().hex,
            )
        )

    def _watch_idle(self, watched: Watched) -> None:
        session, timing = watched.session, self.timing
        burst = _Burst(timing.coalesce_gap, timing.coalesce_max)
        burst.add(_apply(session, session.start_idle(timing.command_timeout)))
        reidle_at = time.monotonic() + timing.idle_seconds
        while True:
            now = time.monotonic()
            if burst.due(now):
                burst.clear()
                self._new_mail(watched)
            if now >= reidle_at:
                burst.add(_apply(session, session.end_idle(timing.command_timeout)))
                burst.add(_apply(session, session.start_idle(timing.command_timeout)))
                reidle_at = time.monotonic() + timing.idle_seconds
                continue
            wake = min(reidle_at, burst.deadline())
            burst.add(_apply(session, session.wait(max(0.0, wake - time.monotonic()))))

    def _watch_poll(self, watched: Watched) -> None:
        session, timing = watched.session, self.timing
        while True:
            news = _apply(session, session.wait(timing.poll_seconds))
            news = _apply(session, session.noop(timing.command_timeout)) or news
            if news:
                self._new_mail(watched)


class _Burst:
    """Coalescing: the first new EXISTS opens a burst, which is pushed once when no more
    arrive for `gap` seconds, or `longest` seconds after it opened, whichever is first."""

    __slots__ = ("first", "gap", "last", "longest")

    def __init__(self, gap: float, longest: float) -> None:
        self.gap = gap
        self.longest = longest
        self.first: float | None = None
        self.last = 0.0

    def add(self, news: bool) -> None:
        if news:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            self.last = now

    def deadline(self) -> float:
        if self.first is None:
            return float("inf")
        return min(self.last + self.gap, self.first + self.longest)

    def due(self, now: float) -> bool:
        return self.first is not None and now >= self.deadline()

    def clear(self) -> None:
        self.first = None


def _apply(session: imap.Session, events: list[imap.Event]) -> bool:
    """Fold `events` into the session's message count; True if new mail arrived."""
    news = False
    for event in events:
        if event.kind == "EXISTS" and event.number is not None:
            if event.number > session.exists:
                news = True
            session.exists = event.number
        elif event.kind == "EXPUNGE":
            session.exists = max(0, session.exists - 1)
    return news


def _join(runner: Any, timeout: float) -> None:
    if runner is not None and timeout > 0:
        runner.join(timeout)


# --- the process's manager ------------------------------------------------------------------

_manager: Manager | None = None
_manager_lock = threading.Lock()


def get_manager() -> Manager:
    """This process's manager, created on first use (the embedded mode's "start")."""
    global _manager
    with _manager_lock:
        if _manager is None:
            from pushproxy.services.delivery import QueueSink

            _manager = Manager(
                sink=QueueSink(),
                timing=Timing.from_settings(),
                max_sessions=settings.PUSHPROXY_MAX_SESSIONS,
                max_per_account=settings.PUSHPROXY_MAX_PER_ACCOUNT,
                close_db=not settings.HAS_REDIS,
                max_poll_per_host=settings.PUSHPROXY_MAX_POLL_PER_HOST,
            )
        return _manager


def reset_manager(*, wait: float = 5.0) -> int:
    """Drain and forget this process's manager (tests; a stopping embedded server)."""
    global _manager
    with _manager_lock:
        manager, _manager = _manager, None
    if manager is None:
        return 0
    return manager.drain(reason="shutdown", notify=False, wait=wait)
