"""`manage.py run_push_monitor`: a monitor process holding IMAP IDLE sessions (docs/push.md).

One process = a Celery worker with the gevent pool consuming only its own queue
idle.<worker-id> (the short watch/stop/drain commands) + the session manager, whose
sessions are greenlets outside any task. It registers itself and beats a heartbeat; on
SIGTERM or SIGINT Celery stops taking commands (watch tasks finish within a login's time),
then every session is logged out and its subscription gets a reconnect push.

manage.py gevent-patches the process before Django loads when this command is named.
"""

from __future__ import annotations

import os
import resource
import socket
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from pushproxy import monitor
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

        from portal.celery import app

        worker_id: str = options["worker_id"]
        queue = monitors.queue_name(worker_id)
        monitors.register(worker_id)
        manager = monitor.get_manager()
        beat = gevent.spawn(self._heartbeat, worker_id, manager)
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
            beat.kill()
            close_old_connections()
            monitors.set_state(worker_id, MonitorState.STOPPING, sessions=manager.count())
            count = manager.drain(reason="shutdown", notify=True, wait=10.0)
            close_old_connections()
            monitors.set_state(worker_id, MonitorState.STOPPED, sessions=0)
            self.stdout.write(f"monitor {worker_id} stopped: {count} sessions logged out")

    def _heartbeat(self, worker_id: str, manager: monitor.Manager) -> None:
        import gevent

        while True:
            gevent.sleep(settings.PUSHPROXY_HEARTBEAT_SECONDS)
            try:
                close_old_connections()
                monitors.heartbeat(worker_id, sessions=manager.count())
            except Exception:  # the database may blip; the next beat tries again
                self.stderr.write("heartbeat failed")
