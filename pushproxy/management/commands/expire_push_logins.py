"""`manage.py expire_push_logins`: fail push subscriptions whose login never came."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from pushproxy.services.subscriptions import expire_pending


class Command(BaseCommand):
    help = "Fail pending push subscriptions past PUSHPROXY_PENDING_SECONDS (reconnect pushed)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            expired = expire_pending()
        except DatabaseError as exc:
            raise CommandError(f"database error: {exc}") from exc
        self.stdout.write(f"expired {expired} pending subscriptions")
