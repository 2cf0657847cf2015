"""`manage.py end_expired_accounts`: disable and later delete temporary accounts now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.services.lifetime import end_expired_accounts


class Command(BaseCommand):
    help = "Disable accounts whose lifetime ended; delete those past the grace period."

    def handle(self, *args: Any, **options: Any) -> None:
        report = end_expired_accounts()
        for error in report.errors:
            self.stderr.write(error)
        self.stdout.write(
            f"{len(report.disabled)} disabled, {len(report.deleted)} deleted, "
            f"{len(report.errors)} errors"
        )
        if report.errors:
            raise CommandError("some accounts could not be changed (see above)")
