"""Compare the accounts with the mail server's own view, finish what was interrupted, report.

RELIABILITY.md invariant 2: every mailbox on the mail server has one account row and every
account row its mailbox. Account changes are ordered so that a crash leaves a row marked
"creating" or "deleting" (accounts.models.MailboxState), never a mailbox without a row; the
reconciler settles those rows and then compares what remains with the backend's inventory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from django.db.models import Q

from accounts.mailbox import MailboxError, get_backend
from accounts.models import AccountStatus, MailAccount, MailboxState
from accounts.services.accounts import mailbox_request, roll_back_creation
from providers.models import ProviderDomain

logger = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one pass found and did. Addresses, never secrets."""

    rolled_back: list[str] = field(default_factory=list)  # interrupted creations undone
    deletions_finished: list[str] = field(default_factory=list)  # interrupted deletions done
    orphan_mailboxes: list[str] = field(default_factory=list)  # on the server, no row
    missing_mailboxes: list[str] = field(default_factory=list)  # ready row, not on the server
    status_drift: list[str] = field(default_factory=list)  # enabled on one side only
    fixed: list[str] = field(default_factory=list)  # of the three above, repaired now
    errors: list[str] = field(default_factory=list)
    inventory_checked: bool = False

    @property
    def clean(self) -> bool:
        """Nothing left that disagrees (what was fixed in this pass counts as agreeing)."""
        unresolved = (
            set(self.orphan_mailboxes) | set(self.missing_mailboxes) | set(self.status_drift)
        ) - set(self.fixed)
        return not unresolved and not self.errors and self.inventory_checked

    def summary(self) -> str:
        return (
            f"{len(self.rolled_back)} interrupted creations rolled back, "
            f"{len(self.deletions_finished)} interrupted deletions finished, "
            f"{len(self.orphan_mailboxes)} orphan mailboxes, "
            f"{len(self.missing_mailboxes)} missing mailboxes, "
            f"{len(self.status_drift)} with other status on the mail server, "
            f"{len(self.fixed)} fixed, {len(self.errors)} errors"
            + ("" if self.inventory_checked else " (the mail server's list was not available)")
        )


def reconcile_mailboxes(
    *, fix_drift: bool = True, recreate_missing: bool = False, delete_orphans: bool = False
) -> ReconcileReport:
    """Settle interrupted changes and compare every hosted domain with the mail server.

    Always: creations interrupted longer than MAILBOX_RECONCILE_GRACE are rolled back (they
    were never acknowledged) and interrupted deletions are finished. Then the backend's
    inventory is compared with the ready rows and reported. Repairs, each optional:
    `fix_drift` enables or disables mailboxes to match the account status (the database
    is the truth); `recreate_missing` makes a mailbox for a ready row the mail server lacks
    (after restoring the mail server from a backup; the mailbox gets the stored hash);
    `delete_orphans` deletes mailboxes that no row knows (off by default: on a mail server
    shared with other tools they may be someone else's).
    Idempotent: a second pass, or a pass redelivered after a crash, finds nothing to do.
    Side effects: backend calls and row deletions as described; one log line per finding.
    """
    report = ReconcileReport()
    backend = get_backend()
    _settle(report)
    domains = frozenset(
        ProviderDomain.objects.filter(provider__hosted=True).values_list("name", flat=True)
    )
    try:
        inventory = backend.inventory(domains)
    except MailboxError as exc:
        report.errors.append(f"inventory: {exc.message}")
        logger.error("reconcile: the mail server's list is not available: %s", exc.message)
        return report
    report.inventory_checked = True
    accounts = {
        account.address: account
        for account in MailAccount.objects.select_related("domain__provider").filter(
            Q(domain__name__in=domains) & ~Q(mailbox_state=MailboxState.DELETING)
        )
    }
    for address in sorted(set(inventory.mailboxes) - set(accounts)):
        report.orphan_mailboxes.append(address)
        logger.warning("reconcile: mailbox %s has no account", address)
        if delete_orphans:
            _repair(report, address, partial(backend.delete, address))
    for address, account in sorted(accounts.items()):
        if account.mailbox_state != MailboxState.READY:
            continue  # a creation under way (within the grace period)
        should_log_in = account.status == AccountStatus.ACTIVE
        if address not in inventory.mailboxes:
            if inventory.lists_disabled or should_log_in:
                report.missing_mailboxes.append(address)
                logger.warning("reconcile: account %s has no mailbox", address)
                if recreate_missing:
                    _repair(report, address, partial(backend.create, mailbox_request(account)))
            continue
        if inventory.mailboxes[address] != should_log_in:
            report.status_drift.append(address)
            logger.warning(
                "reconcile: %s is %s in the portal but %s on the mail server",
                address,
                account.status,
                "enabled" if inventory.mailboxes[address] else "disabled",
            )
            if fix_drift:
                change = backend.enable if should_log_in else backend.disable
                _repair(report, address, partial(change, address))
    logger.info("reconcile: %s", report.summary())
    return report


def _settle(report: ReconcileReport) -> None:
    """Roll back interrupted creations and finish interrupted deletions."""
    backend = get_backend()
    for account in MailAccount.objects.interrupted(MailboxState.CREATING).select_related("domain"):
        try:
            if roll_back_creation(account=account):
                report.rolled_back.append(account.address)
        except MailboxError as exc:
            report.errors.append(f"{account.address}: {exc.message}")
    for account in MailAccount.objects.interrupted(MailboxState.DELETING).select_related("domain"):
        try:
            backend.delete(account.address)
        except MailboxError as exc:
            report.errors.append(f"{account.address}: {exc.message}")
            continue
        deleted, _ = MailAccount.objects.filter(
            pk=account.pk, mailbox_state=MailboxState.DELETING
        ).delete()
        if deleted:
            report.deletions_finished.append(account.address)
            logger.warning("interrupted deletion of %s finished", account.address)


def _repair(report: ReconcileReport, address: str, action: Callable[[], None]) -> None:
    try:
        action()
    except MailboxError as exc:
        report.errors.append(f"{address}: {exc.message}")
    else:
        report.fixed.append(address)
