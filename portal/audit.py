"""Security events: one structured, single-line record per event (RELIABILITY.md check 28).

`security_event("login", outcome="failure", actor=name, reason="wrong password")` writes one
record on the logger `portal.security`: a JSON object with the UTC time, the event, its
outcome, the actor (who acted: a typed account name, an administrator), the client address
and the caller's fields. JSON with only ASCII in it: a line break, a NEL or a U+2028 in a
typed name is escaped, so one event is always one line that no value can forge.

The client address comes from the request being served (`RequestContextMiddleware` keeps it
for the request's thread; "-" in a task or a command). No credential is ever a field: names
that look like one (password, token, secret, code) are refused, loudly, at the call.

What emits which event (docs/operations.md lists them for operators):
- `login` (self-service, accounts/services/sessions.py) and `admin.login` (Django's auth
  signals, below): success and failure;
- `registration` (accounts/services/accounts.py `create_account`): created or refused;
- `rate_limit` (portal/ratelimit.py): limited, or refused because the counter store is down;
- `egress.refused` (portal/netguard.py): an outbound call the guard refused;
- `token.redeem` (providers/services/onboarding.py `redeem_token`): redeemed or refused;
- `dclogin.generated` (accounts/services/sheets.py): a DCLOGIN code made for an account,
  also kept as an admin history entry (LogEntry) of that account;
- `admin.action` (portal/adminsite.py: every admin action) and `admin.change` (every admin
  history entry: additions, changes, deletions through admin pages).
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse

from portal.proxies import client_ip

logger = logging.getLogger("portal.security")

# A field whose name contains one of these would carry a credential: refused at the call.
_FORBIDDEN = ("password", "token", "secret", "code", "credential", "hash")
# Fields every record has, in this order.
_BASE = ("time", "event", "outcome", "actor", "ip")

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "portal_audit_request", default=None
)


def current_client_ip() -> str:
    """The client address of the request being served, "-" outside one."""
    request = _request.get()
    return client_ip(request) if request is not None else "-"


def current_admin() -> str:
    """The logged-in administrator of the request being served, "" outside one."""
    request = _request.get()
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return str(user.get_username())
    return ""


def security_event(
    event: str, *, outcome: str, actor: str = "", ip: str | None = None, **fields: Any
) -> None:
    """Log one security event (see the module docstring for the events).

    `actor`: who acted ("" when unknown). `ip`: the client address when the caller knows
    it better than the request being served (default: that request's, "-" outside one).
    `fields`: plain values (str, int, bool, None) naming what was acted on, never a
    credential: a field name containing password, token, secret, code, credential or hash
    raises ValueError (an onboarding token's id goes in `onboarding=`, an error code in
    `reason=`).
    """
    for name in fields:
        if name in _BASE or any(word in name.lower() for word in _FORBIDDEN):
            raise ValueError(f"security_event: field {name!r} is not allowed")
    record = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": event,
        "outcome": outcome,
        "actor": actor or "-",
        "ip": ip or current_client_ip(),
        **{name: _plain(value) for name, value in fields.items()},
    }
    logger.info("%s", json.dumps(record, ensure_ascii=True), extra={"security": record})


def _plain(value: Any) -> str | int | bool | None:
    if value is None or isinstance(value, bool | int):
        return value
    return str(value)


class RequestContextMiddleware:
    """Keep the request for security_event's client address (its own thread/context)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def log_admin_login(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """django.contrib.auth's user_logged_in: an administrator logged in."""
    security_event("admin.login", outcome="success", actor=user.get_username())


def log_admin_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """django.contrib.auth's user_login_failed: the typed name only (Django masks the rest)."""
    security_event("admin.login", outcome="failure", actor=str(credentials.get("username", "")))


def log_admin_history(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """post_save of admin's LogEntry: every change recorded in an object's admin history."""
    if not created or getattr(instance, "security_logged", False):
        return
    action = {1: "addition", 2: "change", 3: "deletion"}.get(instance.action_flag, "other")
    security_event(
        "admin.change",
        outcome=action,
        actor=instance.user.get_username() if instance.user_id else "",
        model=f"{instance.content_type.app_label}.{instance.content_type.model}"
        if instance.content_type_id
        else "",
        object_id=str(instance.object_id),
        object=instance.object_repr,
        change=instance.get_change_message(),
    )
