"""The `command` backend: run the operator's program with a JSON request on stdin.

For mail servers that manage their own users (poste.io, mailcow scripts, a doveadm
wrapper). The program is MAILBOX_COMMAND (split like a shell would, no shell involved).
It reads one JSON object from stdin:

    {"action": "create" | "delete" | "set-password" | "disable" | "enable",
     "address": "juliet@example.org", "passwordHash": "{ARGON2ID}$argon2id$...",
     "password": "<clear text, create and set-password only>", "quotaMB": 1024,
     "fullName": "Juliet Capulet"}

Exit status 0 means done; anything else fails the account change (it is rolled back) and
the first line of stderr is reported, with the password removed if the program echoed it.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from accounts.mailbox.base import MailboxBackend, MailboxError, MailboxRequest

logger = logging.getLogger(__name__)


class CommandBackend(MailboxBackend):
    name = "command"

    def __init__(self) -> None:
        if not settings.MAILBOX_COMMAND:
            raise ImproperlyConfigured("MAILBOX_BACKEND=command needs MAILBOX_COMMAND")
        self.argv = shlex.split(settings.MAILBOX_COMMAND)
        self.timeout = settings.MAILBOX_COMMAND_TIMEOUT

    def create(self, mailbox: MailboxRequest) -> None:
        self._run("create", mailbox.address, _details(mailbox), secret=mailbox.password)

    def delete(self, address: str) -> None:
        self._run("delete", address, {})

    def set_password(self, mailbox: MailboxRequest) -> None:
        self._run("set-password", mailbox.address, _details(mailbox), secret=mailbox.password)

    def disable(self, address: str) -> None:
        self._run("disable", address, {})

    def enable(self, address: str) -> None:
        self._run("enable", address, {})

    def _run(
        self, action: str, address: str, details: dict[str, object], secret: str | None = None
    ) -> None:
        request = json.dumps({"action": action, "address": address, **details})
        try:
            result = subprocess.run(  # noqa: S603 - argv from the operator's configuration
                self.argv,
                input=request,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.error("mailbox command %s for %s failed to run: %s", action, address, exc)
            raise MailboxError() from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[0]
            if secret:
                reason = reason.replace(secret, "[password]")
            logger.error(
                "mailbox command %s for %s exited %s: %s",
                action,
                address,
                result.returncode,
                reason,
            )
            raise MailboxError(f"The mail server refused: {reason}")


def _details(mailbox: MailboxRequest) -> dict[str, object]:
    details: dict[str, object] = {
        "passwordHash": mailbox.password_hash,
        "quotaMB": mailbox.quota_mb,
        "fullName": mailbox.full_name,
    }
    if mailbox.password is not None:
        details["password"] = mailbox.password
    return details
