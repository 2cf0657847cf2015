"""`manage.py purge_registrations`: drop expired idempotency records and abandoned sign-ups."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from accounts.services.registration import purge_registrations


class Command(BaseCommand):
    help = "Delete registration records older than 24 h and pending accounts never verified."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = purge_registrations()
        except DatabaseError as exc:
            raise CommandError(f"database error: {exc}") from exc
        self.stdout.write(
            f"purged {result.requests} registration records, {result.accounts} pending accounts"
        )
