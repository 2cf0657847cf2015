"""Temporary accounts (made by onboarding tokens with a lifetime): disabled, then deleted."""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def end_expired_accounts(*, at: datetime | None = None, batch: int = BATCH) -> LifetimeReport:
    """Disable accounts whose lifetime has ended; delete them TEMPORARY_ACCOUNT_GRACE later.

    Both steps go through accounts.services.accounts (set_status, delete_account), so the
    mail server follows and open sessions end. Idempotent: a pass that is cut short or
    runs twice leaves nothing half done that the next pass does not finish. Errors are
    reported per address (the mail server refused: tried again next pass).

    Each step takes the accounts whose lifetime ended first, up to `batch` done; accounts
    the mail server refuses stay first in line, so a step looks past up to `batch` refusals
    and they do not hold up the accounts behind them.
    """
    now = at or timezone.now()
    report = LifetimeReport()
    ready = (
        MailAccount.objects.filter(mailbox_state=MailboxState.READY)
        .select_related("domain")
        .order_by("expires_at", "pk")
    )
    # Enough candidates for `batch` done and `batch` refused: one query per step.
    to_delete = list(ready.lifetime_over(now - settings.TEMPORARY_ACCOUNT_GRACE)[: 2 * batch])
    to_disable = list(
        ready.lifetime_over(now)
        .exclude(status=AccountStatus.DISABLED)
        .exclude(pk__in=[account.pk for account in to_delete])[: 2 * batch]
    )
    _each(
        to_disable,
        lambda account: set_status(account=account, status=AccountStatus.DISABLED),
        report.disabled,
        report.errors,
        batch,
    )
    _each(to_delete, _delete, report.deleted, report.errors, batch)
    if report.disabled or report.deleted or report.errors:
        logger.info(
            "account lifetimes: %d disabled, %d deleted, %d errors",
            len(report.disabled),
            len(report.deleted),
            len(report.errors),
        )
    return report


def _delete(account: MailAccount) -> bool:
    delete_account(account=account)
    return True


def _each(
    accounts: list[MailAccount],
    step: Callable[[MailAccount], bool],
    done: list[str],
    errors: list[str],
    batch: int,
) -> None:
    """Run `step` on `accounts` in order until `batch` are done or `batch` were refused."""
    refused = 0
    for account in accounts:
        if len(done) >= batch or refused >= batch:
            return
        try:
            if step(account):
                done.append(account.address)
        except PortalError as exc:
            refused += 1
            errors.append(f"{account.address}: {exc.message}")
