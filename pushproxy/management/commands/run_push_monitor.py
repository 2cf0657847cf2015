"""`manage.py run_push_monitor`: a monitor process holding IMAP IDLE sessions (docs/push.md).

One process = a Celery worker with the gevent pool consuming only its own queue
idle.<worker-id> (the short watch/stop/drain commands) + the session manager, whose
sessions are greenlets outside any task. Once Celery consumes, it joins the fleet
(pushproxy.fleet): every PUSHPROXY_HEARTBEAT_SECONDS it renews its shard leases in one Redis
call, takes free shards up to its fair share or gives some back (rebalancing), logs out with
a reconnect push the sessions of shards it no longer holds, and beats its database row.
On SIGTERM or SIGINT Celery stops taking commands (watch tasks finish within a login's time)
and, at the same moment rather than after Celery's warm shutdown, the process leaves the
fleet (its shards are free at once), logs every session out and gives its subscription a
reconnect push; an alarm armed on the signal bounds all that by PUSHPROXY_SHUTDOWN_SECONDS.
After `kill -9` the reaper does the same from outside.

manage.py gevent-patches the process before Django loads when this command is named.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket
from collections import Counter
from typing import Any

from celery import bootsteps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from pushproxy import fleet, monitor
from pushproxy.models import MonitorState
from pushproxy.services import monitors


class Command(BaseCommand):
    help = "Hold IMAP IDLE sessions: a gevent Celery worker on idle.<id> plus the session manager."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id",
            dest="worker_id",
            default=f"{socket.gethostname().split('.')[0]}-{os.getpid()}",
            help="this monitor's id; its queue is idle.<id> (default: <host>-<pid>)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=50,
            help="logins handled at once (watch tasks); sessions are not limited by this",
        )
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.HAS_REDIS:
            raise CommandError(
                "run_push_monitor needs REDIS_URL; without Redis the web process holds the sessions"
            )
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            raise CommandError("start it as `python manage.py run_push_monitor` (gevent first)")
        # Passwords pass through this process's memory: never into a core file
        # (RELIABILITY.md invariant 8).
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        import gevent
        from celery.signals import worker_ready, worker_shutting_down

        from portal.celery import app

        # One result backend for the whole process. Celery keeps one per thread by default,
        # and under gevent a thread is a greenlet: every `watch` built a backend with its
        # own Redis client and connection (a third of the login's CPU, and a connection
        # per greenlet until the collector found it). This process only stores results
        # (it never waits on one), which redis-py's pooled client does safely from any
        # greenlet (docs/benchmarks.md, "Push fleet path"). What sessions send from here
        # must keep ignoring its result (`deliver_push` does): a task sent with a result
        # subscribes to it through the backend's one PubSub, which is not greenlet-safe.
        app.conf.result_backend_thread_safe = True
        worker_id: str = options["worker_id"]
        queue = monitors.queue_name(worker_id)
        _consume_without_acks(app, queue)
        _share_database_connections(options["concurrency"] + 5)
        monitors.register(worker_id)
        manager = monitor.get_manager()
        membership = fleet.join(worker_id)
        manager.owns = membership.holds
        self._freezer = monitor.HeapFreezer(step=1000)
        loops: list[Any] = []
        stopping: list[Any] = []  # the shutdown greenlet, once started
        watchers: list[Any] = []

        def join_fleet(**_kwargs: Any) -> None:
            # Only once Celery consumes idle.<id>: a shard taken earlier could be routed
            # hand-offs that nobody reads yet.
            if not stopping:
                loops.append(gevent.spawn(self._fleet_loop, membership, manager))
            watchers.extend(_prompt_signals())

        def shut_down(**_kwargs: Any) -> None:
            # Celery's SIGTERM/SIGINT handler (it stops consuming). The sessions do not wait
            # for Celery's warm shutdown, which takes seconds (its broker polls time out,
            # its control thread is joined): leaving and logging out start now.
            if not stopping:
                signal.alarm(settings.PUSHPROXY_SHUTDOWN_SECONDS)  # SIGALRM's default: exit
                stopping.append(
                    gevent.spawn(self._shut_down, worker_id, membership, manager, loops)
                )

        worker_ready.connect(join_fleet, weak=False)
        worker_shutting_down.connect(shut_down, weak=False)
        self.stdout.write(f"monitor {worker_id}: consuming {queue}")
        self.stdout.flush()
        worker = app.Worker(
            hostname=f"{worker_id}@{socket.gethostname()}",
            pool_cls="gevent",
            concurrency=options["concurrency"],
            queues=[queue],
            loglevel=options["loglevel"],
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            redirect_stdouts=False,
        )
        try:
            worker.start()
        finally:
            shut_down()  # Celery stopped without a signal (an error): the same way out
            stopping[0].join()

    def _shut_down(
        self,
        worker_id: str,
        membership: fleet.Membership,
        manager: monitor.Manager,
        loops: list[Any],
    ) -> None:
        """SIGTERM (in a greenlet of its own, while Celery stops taking commands): leave the
        fleet, so the other monitors take the shards at once, log every session out with a
        reconnect push. The alarm armed with it ends the process if all that, and Celery's
        own shutdown, take longer than PUSHPROXY_SHUTDOWN_SECONDS."""
        for loop in loops:
            loop.kill()
        sessions = manager.count()
        try:
            released = membership.leave()
        except Exception as exc:  # Redis gone: the leases lapse and the reaper hands them on
            released = 0
            self.stderr.write(f"leaving the fleet failed: {type(exc).__name__}")
        close_old_connections()
        monitors.set_state(worker_id, MonitorState.STOPPING, sessions=sessions)
        wait = max(1.0, settings.PUSHPROXY_SHUTDOWN_SECONDS - 5.0)
        count = manager.drain(reason="shutdown", notify=True, wait=wait)
        close_old_connections()
        monitors.set_state(worker_id, MonitorState.STOPPED, sessions=0)
        monitor.release_db()  # this greenlet's own connection
        fleet.leave_process()
        self.stdout.write(
            f"monitor {worker_id} stopped: {count} sessions logged out, {released} shards released"
        )
        self.stdout.flush()

    def _fleet_loop(self, membership: fleet.Membership, manager: monitor.Manager) -> None:
        """Every PUSHPROXY_HEARTBEAT_SECONDS: renew the leases, rebalance, beat in the database."""
        import gevent

        while True:
            try:
                self._fleet_round(membership, manager)
            except Exception as exc:  # Redis or the database may blip; the next round retries
                self.stderr.write(f"fleet round failed: {type(exc).__name__}: {exc}")
            gevent.sleep(settings.PUSHPROXY_HEARTBEAT_SECONDS)

    def _fleet_round(self, membership: fleet.Membership, manager: monitor.Manager) -> None:
        renewal = membership.renew()
        if renewal.reaped:
            # The reaper took our shards and told our subscriptions to reconnect already.
            ended = manager.end_where(lambda _watched: True, reason="reaped", notify=False)
            self.stderr.write(f"this monitor was reaped; {ended} sessions logged out")
        _end_outside(manager, membership, reason="moved")
        counts = Counter(fleet.shard_of(w.account_key) for w in manager.sessions())
        take, give = membership.plan(counts)
        if take:
            membership.acquire(take, start=random.randrange(fleet.SHARDS))  # noqa: S311
        if give:
            membership.release(give)
            _end_outside(manager, membership, reason="rebalanced")
        close_old_connections()
        monitors.heartbeat(
            membership.worker_id, sessions=manager.count(), shards=len(membership.owned)
        )
        if self._freezer.after(manager.count()):
            self.stdout.write(f"{manager.count()} sessions: heap frozen (gc.freeze)")


def _consume_without_acks(app: Any, queue: str) -> None:
    """Take commands off idle.<id> without kombu's unacked bookkeeping in Redis (its
    visibility index: a HSET and a ZADD per message on receipt, a HDEL and a ZREM on ack).

    That bookkeeping exists to hand an unfinished message to another consumer; this queue
    has none. Its commands act on this process's sessions: a `watch` carries a password
    sealed for 30 s, and `stop` or `drain` for sessions that died with the process. A
    redelivered message could only fail later (docs/push.md, "Processes").

    No prefetch limit applies to no_ack messages: the consumer takes the next command and
    waits in the gevent pool's spawn until a slot frees, so one command at most has left
    Redis without running yet (a `watch` among them may find its seal expired: its login
    fails as `push_unavailable`, as it would have in the queue).
    """
    from kombu import Exchange, Queue

    app.amqp.queues.add(
        Queue(queue, Exchange(queue, type="direct"), routing_key=queue, no_ack=True)
    )
    app.steps["consumer"].add(AcksIgnored)


class AcksIgnored(bootsteps.StartStopStep):
    """After every (re)start of Celery's task consumer: its channel forgets acks and
    rejects. Celery acks every message, but kombu's Redis channel skips the ack of a no_ack
    message only for transports that name their no_ack consumers (Redis does not): each ack
    sent a HDEL and a ZREM that found nothing and kept the tag in the channel's acked set,
    which only an acked message's successor empties (a tag per command, for the process's
    life). The monitor's task channel carries idle.<id> alone, all no_ack."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, parent: Any) -> None:
        qos = parent.task_consumer.channel.qos
        qos.ack = qos.reject = _ignored


def _ignored(*_args: Any, **_kwargs: Any) -> None:
    return None


def _share_database_connections(size: int) -> None:
    """Serve the process's greenlets from one pool of PostgreSQL connections.

    Django's connections are per greenlet once gevent patches the process, and every watch
    task is a greenlet of its own: without a pool each login opened a PostgreSQL connection
    (a backend fork and authentication) and closed it again, which cost the monitor about
    as much CPU as the TLS login itself (docs/benchmarks.md, "Push fleet path"). With
    Django's psycopg pool a greenlet's `close` hands the connection back. `size`: the watch
    tasks at once plus the fleet loop and shutdown. SQLite (no pool) is left as it is."""
    database: dict[str, Any] = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        return
    close_old_connections()
    database["CONN_MAX_AGE"] = 0  # Django's pool and persistent connections exclude each other
    pool = {"min_size": 2, "max_size": size, "timeout": 10}
    database["OPTIONS"] = {**database.get("OPTIONS", {}), "pool": pool}


def _end_outside(manager: monitor.Manager, membership: fleet.Membership, *, reason: str) -> int:
    """Log out, with a reconnect push, the sessions whose shard this process no longer holds:
    their account now routes to another monitor, where the app's next request lands."""
    return manager.end_where(
        lambda watched: not membership.holds(watched.account_key), reason=reason, notify=True
    )


def _prompt_signals() -> list[Any]:
    """Wake the gevent hub for SIGTERM and SIGINT and run the handlers Celery installed.

    Python runs a signal handler when the main thread next executes bytecode; in a gevent
    process idling in the hub that is the next timer or socket event, seconds later. A libev
    signal watcher wakes the hub at once. The watchers are returned: kept alive, they stay."""
    import gevent

    watchers = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if callable(handler):
            watchers.append(gevent.signal_handler(signum, handler, signum, None))
    return watchers
