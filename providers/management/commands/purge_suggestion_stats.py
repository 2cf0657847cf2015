"""`manage.py purge_suggestion_stats [--days N]`: delete old hourly suggestion counters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.services import suggestion_stats


class Command(BaseCommand):
    help = "Delete hourly suggestion counters older than N days (default SUGGESTION_STATS_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="keep this many days")

    def handle(self, *args: Any, days: int | None, **options: Any) -> None:
        if days is not None and days < 0:
            raise CommandError("--days must be 0 or more")
        deleted = suggestion_stats.purge(older_than_days=days)
        self.stdout.write(f"{deleted} hourly suggestion counters deleted")
