"""Temporary accounts (made by onboarding tokens with a lifetime): disabled, then deleted."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from accounts.models import AccountStatus, MailAccount, MailboxState
from accounts.services.accounts import delete_account, set_status
from portal.errors import PortalError

logger = logging.getLogger(__name__)

# Accounts handled per pass at most, so one pass stays well inside a task's time limit; the
# next pass (5 minutes later, CELERY_BEAT_SCHEDULE) takes the rest.
BATCH = 500


@dataclass
class LifetimeReport:
    disabled: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def end_expired_accounts(*, at: datetime | None = None) -> LifetimeReport:
    """Disable accounts whose lifetime has ended; delete them TEMPORARY_ACCOUNT_GRACE later.

    Both steps go through accounts.services.accounts (set_status, delete_account), so the
    mail server follows and open sessions end. Idempotent: a pass that is cut short or
    runs twice leaves nothing half done that the next pass does not finish. Errors are
    reported per address (the mail server refused: tried again next pass).
    """
    now = at or timezone.now()
    report = LifetimeReport()
    ready = MailAccount.objects.filter(mailbox_state=MailboxState.READY).select_related("domain")
    to_delete = list(ready.lifetime_over(now - settings.TEMPORARY_ACCOUNT_GRACE)[:BATCH])
    gone = {account.pk for account in to_delete}
    to_disable = [
        account
        for account in ready.lifetime_over(now).exclude(status=AccountStatus.DISABLED)[:BATCH]
        if account.pk not in gone
    ]
    for account in to_disable:
        try:
            if set_status(account=account, status=AccountStatus.DISABLED):
                report.disabled.append(account.address)
        except PortalError as exc:
            report.errors.append(f"{account.address}: {exc.message}")
    for account in to_delete:
        try:
            delete_account(account=account)
            report.deleted.append(account.address)
        except PortalError as exc:
            report.errors.append(f"{account.address}: {exc.message}")
    if report.disabled or report.deleted or report.errors:
        logger.info(
            "account lifetimes: %d disabled, %d deleted, %d errors",
            len(report.disabled),
            len(report.deleted),
            len(report.errors),
        )
    return report
