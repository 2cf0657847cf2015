"""The mailbox backend interface: create, delete, set password, disable, enable."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from portal.errors import ServiceUnavailable


class MailboxError(ServiceUnavailable):
    """The mail server refused or could not be reached; the account change is rolled back."""

    code = "mailbox_failed"
    default_message = "The mail server could not set up the mailbox; try again shortly."


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
    password: str | None = field(default=None, repr=False)


class MailboxBackend(ABC):
    """Called inside the account's database transaction: raising rolls the change back."""

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
