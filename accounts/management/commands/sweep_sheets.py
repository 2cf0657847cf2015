"""`manage.py sweep_sheets`: restart or fail lost onboarding-sheet jobs, delete old sheets."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.services.sheets import sweep_sheets


class Command(BaseCommand):
    help = "Queue again or fail onboarding sheets whose worker was lost; delete expired ones."

    def handle(self, *args: Any, **options: Any) -> None:
        report = sweep_sheets()
        self.stdout.write(
            f"{len(report.requeued)} queued again, {len(report.failed)} failed, "
            f"{report.purged} deleted"
        )
