"""Mailbox backends: how an account becomes real on the mail server (MAILBOX_BACKEND)."""

from __future__ import annotations

import functools

from django.conf import settings
from django.utils.module_loading import import_string

from accounts.mailbox.base import MailboxBackend, MailboxError, MailboxRequest

BACKENDS = {
    "sql": "accounts.mailbox.sql.SqlBackend",
    "command": "accounts.mailbox.command.CommandBackend",
}

__all__ = ["BACKENDS", "MailboxBackend", "MailboxError", "MailboxRequest", "get_backend"]


@functools.cache
def _load(name: str, command: str, timeout: int) -> MailboxBackend:
    backend: MailboxBackend = import_string(BACKENDS[name])()
    return backend


def get_backend() -> MailboxBackend:
    """The configured backend, loaded once per configuration (settings change in tests)."""
    return _load(
        settings.MAILBOX_BACKEND, settings.MAILBOX_COMMAND, settings.MAILBOX_COMMAND_TIMEOUT
    )
