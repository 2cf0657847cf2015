"""A client of Dovecot's doveadm HTTP API (`doveadm_api_key`, `service doveadm` http listener).

Used by the `sql` backend to end an account's open sessions (`kick`), which Dovecot keeps
after the row that let them log in changed. Requests and answers are doveadm's JSON form:
`[[command, parameters, tag]]` in, `[["doveadmResponse", result, tag]]` or
`[["error", {"type": "exitCode", "exitCode": N}, tag]]` out.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5
# doveadm's exit code when a mask matched no connected user: nothing to kick.
_NO_MATCH = 68


class DoveadmError(Exception):
    """The API could not be reached, refused the key, or the command failed (`exit_code`)."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def configured() -> bool:
    return bool(settings.DOVEADM_API_URL)


def call(command: str, parameters: dict[str, Any]) -> Any:
    """Run one doveadm command through the API; its result, or DoveadmError.

    An exit code comes back as DoveadmError with `exit_code` set.
    """
    body = json.dumps([[command, parameters, "mailportal"]]).encode()
    key = base64.b64encode(settings.DOVEADM_API_KEY.encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - the operator's configured http(s) URL
        f"{settings.DOVEADM_API_URL}/doveadm/v1",
        data=body,
        headers={"Authorization": f"X-Dovecot-API {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            answer = json.loads(response.read(1_000_000))
    except urllib.error.HTTPError as exc:
        raise DoveadmError(f"doveadm API answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise DoveadmError(f"doveadm API unreachable: {type(exc).__name__}") from None
    try:
        (kind, result, _tag) = answer[0]
    except (TypeError, ValueError, IndexError, KeyError):
        raise DoveadmError("doveadm API gave an answer in an unknown form") from None
    if kind == "error":
        exit_code = result.get("exitCode") if isinstance(result, dict) else None
        raise DoveadmError(f"doveadm {command} failed: {result}", exit_code=exit_code)
    return result


def kick(address: str) -> bool:
    """End every open session of `address`; False if none was open. DoveadmError on failure."""
    try:
        call("kick", {"mask": [address]})
    except DoveadmError as exc:
        if exc.exit_code == _NO_MATCH:
            return False
        raise
    return True
