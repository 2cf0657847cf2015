"""`manage.py purge_sessions`: drop expired self-service session rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from accounts.services.sessions import purge_sessions


class Command(BaseCommand):
    help = "Delete self-service sessions past their idle or maximum age."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            deleted = purge_sessions()
        except DatabaseError as exc:
            raise CommandError(f"database error: {exc}") from exc
        self.stdout.write(f"purged {deleted} expired sessions")
