"""The `sql` backend: the mail server reads our database (the dovecot_users view).

Nothing to create on the mail server: a committed `ready` row is a mailbox that
authenticates (Dovecot creates the maildir at first login), a disabled or deleted row is one
that does not. Sessions already open outlive the row, so after a disable, a delete or a new
password the account's sessions are ended through doveadm's HTTP API when it is configured
(DOVEADM_API_URL), once the change is committed. Storage on disk of a deleted account is
removed by the operator (`doveadm`), see deploy/dovecot/README.md.
"""

from __future__ import annotations

import logging

from django.db import connection, transaction

from accounts.mailbox import doveadm
from accounts.mailbox.base import Inventory, MailboxBackend, MailboxRequest

logger = logging.getLogger(__name__)


class SqlBackend(MailboxBackend):
    name = "sql"

    def create(self, mailbox: MailboxRequest) -> None:
        return None

    def delete(self, address: str) -> None:
        _end_sessions_after_commit(address)

    def set_password(self, mailbox: MailboxRequest) -> None:
        _end_sessions_after_commit(mailbox.address)

    def disable(self, address: str) -> None:
        _end_sessions_after_commit(address)

    def enable(self, address: str) -> None:
        return None

    def inventory(self, domains: frozenset[str]) -> Inventory:
        """What Dovecot reads: the dovecot_users rows of `domains` (all may log in)."""
        if not domains:
            return Inventory(mailboxes={}, lists_disabled=False)
        placeholders = ", ".join(["%s"] * len(domains))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT username FROM dovecot_users WHERE domain IN ({placeholders})",  # noqa: S608 - placeholders only
                sorted(domains),
            )
            rows = cursor.fetchall()
        return Inventory(mailboxes={row[0]: True for row in rows}, lists_disabled=False)


def _end_sessions_after_commit(address: str) -> None:
    if doveadm.configured():
        transaction.on_commit(lambda: end_sessions(address))


def end_sessions(address: str) -> None:
    """Kick the open sessions of `address`; a failure is logged, never raised.

    The change itself is committed: an unreachable doveadm only means sessions end at their
    next login instead of now.
    """
    try:
        kicked = doveadm.kick(address)
    except doveadm.DoveadmError as exc:
        logger.warning("open sessions of %s not ended: %s", address, exc)
        return
    if kicked:
        logger.info("open sessions of %s ended", address)
