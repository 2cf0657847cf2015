"""The `sql` backend: the mail server reads our database (the dovecot_users view).

Nothing to do on the mail server: a committed row is a mailbox that authenticates (Dovecot
creates the maildir at first login), a disabled or deleted row is one that does not.
Storage on disk of a deleted account is removed by the operator (`doveadm`), see
deploy/dovecot/README.md.
"""

from __future__ import annotations

from accounts.mailbox.base import MailboxBackend, MailboxRequest


class SqlBackend(MailboxBackend):
    name = "sql"

    def create(self, mailbox: MailboxRequest) -> None:
        return None

    def delete(self, address: str) -> None:
        return None

    def set_password(self, mailbox: MailboxRequest) -> None:
        return None

    def disable(self, address: str) -> None:
        return None

    def enable(self, address: str) -> None:
        return None
