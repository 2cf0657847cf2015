"""`manage.py reconcile_mailboxes`: compare accounts with the mail server, settle, report."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from accounts.services.reconcile import reconcile_mailboxes


class Command(BaseCommand):
    help = (
        "Finish interrupted account creations and deletions, then compare accounts with the "
        "mail server's mailboxes; exits 1 if anything still disagrees."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-fix-status",
            action="store_true",
            help="Only report mailboxes enabled/disabled unlike their account.",
        )
        parser.add_argument(
            "--recreate-missing",
            action="store_true",
            help="Create the mailbox of an account the mail server lacks (after a restore).",
        )
        parser.add_argument(
            "--delete-orphans",
            action="store_true",
            help="Delete mailboxes of hosted domains that no account knows.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = reconcile_mailboxes(
                fix_drift=not options["no_fix_status"],
                recreate_missing=options["recreate_missing"],
                delete_orphans=options["delete_orphans"],
            )
        except DatabaseError as exc:
            raise CommandError(f"database error: {exc}") from exc
        for label, addresses in (
            ("rolled back", report.rolled_back),
            ("deletion finished", report.deletions_finished),
            ("orphan mailbox", report.orphan_mailboxes),
            ("missing mailbox", report.missing_mailboxes),
            ("status differs", report.status_drift),
            ("fixed", report.fixed),
        ):
            for address in addresses:
                self.stdout.write(f"{label}: {address}")
        for error in report.errors:
            self.stderr.write(f"error: {error}")
        self.stdout.write(report.summary())
        if not report.clean:
            raise CommandError("accounts and mailboxes still disagree", returncode=1)
