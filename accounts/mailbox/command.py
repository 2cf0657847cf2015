"""The `command` backend: run the operator's program with a JSON request on stdin.

For mail servers that manage their own users (poste.io, mailcow scripts, a doveadm
wrapper). The program is MAILBOX_COMMAND (split like a shell would, no shell involved).
It reads one JSON object from stdin:

    {"action": "create" | "delete" | "set-password" | "disable" | "enable" | "list",
     "address": "juliet@example.org", "passwordHash": "{ARGON2ID}$argon2id$...",
     "password": "<clear text, create and set-password only>", "quotaMB": 1024,
     "fullName": "Juliet Capulet", "enabled": true}

(`enabled` is false on `create` for an account that must not log in yet.)

`list` carries `"domains": ["example.org", ...]` instead of an address and must print the
mailboxes of those domains on stdout as JSON:

    {"mailboxes": [{"address": "juliet@example.org", "enabled": true}, ...]}

Exit status 0 means done; anything else means nothing was changed: the account change is
rolled back and the first line of stderr is reported, with the password removed if the
program echoed it. The program must keep the contract of MailboxBackend (base.py): `create`
fails for an address that exists, `delete` succeeds for one that does not, and delete,
disable and set-password end the account's open sessions. A program that does not finish
within MAILBOX_COMMAND_TIMEOUT is killed, and its outcome counts as unknown (the reconciler
settles it).
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from accounts.mailbox.base import Inventory, MailboxBackend, MailboxError, MailboxRequest

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

    def inventory(self, domains: frozenset[str]) -> Inventory:
        output = self._run("list", None, {"domains": sorted(domains)})
        try:
            entries = json.loads(output)["mailboxes"]
            mailboxes = {str(entry["address"]).lower(): bool(entry["enabled"]) for entry in entries}
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("mailbox command list: unreadable answer (%s)", type(exc).__name__)
            raise MailboxError("The mailbox program's list is not in the expected form.") from None
        in_domains = {
            address: enabled
            for address, enabled in mailboxes.items()
            if address.rpartition("@")[2] in domains
        }
        return Inventory(mailboxes=in_domains, lists_disabled=True)

    def _run(
        self,
        action: str,
        address: str | None,
        details: dict[str, object],
        secret: str | None = None,
    ) -> str:
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
        except subprocess.TimeoutExpired:
            logger.error(
                "mailbox command %s for %s: no answer in %s s", action, address, self.timeout
            )
            raise MailboxError(
                "The mail server did not answer in time.", outcome_unknown=True
            ) from None
        except OSError as exc:
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
        return result.stdout


def _details(mailbox: MailboxRequest) -> dict[str, object]:
    details: dict[str, object] = {
        "passwordHash": mailbox.password_hash,
        "quotaMB": mailbox.quota_mb,
        "fullName": mailbox.full_name,
        "enabled": mailbox.enabled,
    }
    if mailbox.password is not None:
        details["password"] = mailbox.password
    return details
