"""The mailbox backend interface: create, delete, set password, disable, enable, list."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from portal.errors import ServiceUnavailable


class MailboxError(ServiceUnavailable):
    """The mail server refused or could not be reached.

    `outcome_unknown` is True when the request may have taken effect all the same (a
    timeout, a lost connection): callers then leave the account's row marked for the
    reconciler instead of assuming nothing happened.
    """

    code = "mailbox_failed"
    default_message = "The mail server could not set up the mailbox; try again shortly."

    def __init__(self, message: str | None = None, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


@dataclass(frozen=True)
class MailboxRequest:
    """What a backend needs to know about one mailbox.

    `password` is the clear text, present only for create and set_password and only for
    backends that manage their own users; it is never logged (repr hides it).
    """

    address: str
    password_hash: str  # in the mail server's form, e.g. {ARGON2ID}$argon2id$...
    quota_mb: int
    full_name: str = ""
    # False for a new account that may not log in yet (pending verification or approval).
    enabled: bool = True
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Inventory:
    """The mail server's own view of its mailboxes, for the reconciler.

    `mailboxes` maps each address (lower-case, A-label domain) to whether it may log in.
    `lists_disabled` says whether disabled mailboxes appear at all: the sql backend's view
    lists only those that may log in, so a disabled account is simply absent there.
    """

    mailboxes: Mapping[str, bool]
    lists_disabled: bool


class MailboxBackend(ABC):
    """How accounts become real on the mail server (accounts.services.accounts calls it).

    The contract every backend keeps, which makes crash recovery safe:
    - `create` of an address that already exists on the mail server fails (MailboxError)
      and changes nothing: the portal never takes over a mailbox it did not make.
    - `delete` of an address that does not exist succeeds: deletion can be retried.
    - `disable`, `enable` and `set_password` may be repeated.
    - A MailboxError without `outcome_unknown` means nothing was changed.
    `create`, `delete` and `set_password` of an existing account end its open sessions
    where the backend can (disable too), so a change takes effect at once.
    """

    name = ""

    @abstractmethod
    def create(self, mailbox: MailboxRequest) -> None: ...

    @abstractmethod
    def delete(self, address: str) -> None: ...

    @abstractmethod
    def set_password(self, mailbox: MailboxRequest) -> None: ...

    @abstractmethod
    def disable(self, address: str) -> None: ...

    @abstractmethod
    def enable(self, address: str) -> None: ...

    @abstractmethod
    def inventory(self, domains: frozenset[str]) -> Inventory:
        """The mailboxes of `domains` (A-labels) as the mail server sees them.

        MailboxError if the mail server cannot tell.
        """
