"""`manage.py run_dovecot start|stop|status`: a private Dovecot reading this portal's database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections

from accounts.dovecot import DEFAULT_PORT, LOOPBACK, DovecotError, PrivateDovecot


class Command(BaseCommand):
    help = "Start, stop or show a private Dovecot on 127.0.0.1 that reads this portal's database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["start", "stop", "status"])
        parser.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help=f"IMAP port (default {DEFAULT_PORT})"
        )
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=Path(settings.VAR_DIR) / "dovecot",
            help="config, sockets, log and mailboxes (default var/dovecot/)",
        )

    def handle(self, *args: Any, action: str, port: int, state_dir: Path, **options: Any) -> None:
        database = connections[DEFAULT_DB_ALIAS].settings_dict
        instance = PrivateDovecot(state_dir=state_dir, database=database, port=port)
        try:
            if action == "start":
                self._start(instance, database)
            elif action == "stop":
                stopped = instance.stop()
                self.stdout.write("Dovecot stopped." if stopped else "Dovecot was not running.")
            else:
                self._status(instance)
        except DovecotError as exc:
            raise CommandError(str(exc)) from exc

    def _start(self, instance: PrivateDovecot, database: dict[str, Any]) -> None:
        pid = instance.pid()
        if pid is None:
            pid = instance.start()
            what = "started"
        else:
            what = "already running"
        port = instance.recorded_port() or instance.port
        self.stdout.write(
            f"Dovecot {what} (pid {pid}) on {LOOPBACK}:{port}, reading {_describe(database)}; "
            f"state in {instance.state_dir}/\n"
            f"Log in with a mail client: server {LOOPBACK}, port {port}, no TLS (security "
            "'none', normal password), user name = the full address (you@example.org), "
            "password = the one you registered with.\n"
            "Stop it with `make dovecot-stop` (manage.py run_dovecot stop)."
        )

    def _status(self, instance: PrivateDovecot) -> None:
        pid = instance.pid()
        if pid is None:
            self.stdout.write(f"Dovecot is not running (state in {instance.state_dir}/).")
            return
        sessions = len(instance.sessions())
        self.stdout.write(
            f"Dovecot is running (pid {pid}) on {LOOPBACK}:{instance.recorded_port()}, "
            f"{sessions} IMAP session{'' if sessions == 1 else 's'}."
        )


def _describe(database: dict[str, Any]) -> str:
    """The database for people: never the password."""
    if str(database.get("ENGINE", "")).endswith("sqlite3"):
        return f"the SQLite file {database['NAME']}"
    where = database.get("HOST") or "the local socket"
    if database.get("PORT"):
        where = f"{where}:{database['PORT']}"
    return f"the PostgreSQL database {database['NAME']!r} on {where}"
