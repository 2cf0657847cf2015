"""Secrets that travel in URLs, kept out of every log line (RELIABILITY.md check 9).

An onboarding token is the credential of `POST /dcaccount/<token>` and of mailadm's
`POST /new_email?t=<token>`. Django's request logger, `runserver` and gunicorn's access log
all write the path (and gunicorn the query string): each goes through `redact`.

- `RedactingFilter`: a logging filter on every handler of settings.LOGGING: the portal's
  own, and Django's `django.server` (runserver's request lines: its logger does not
  propagate), `console` (the `django` logger's copy with PORTAL_DEBUG) and `mail_admins`
  (whose mail would also carry the request: it is left out when its URL holds a token).
- `GunicornLogger`: gunicorn's logger class with the request line, path and query string of
  the access log redacted (`--logger-class portal.redact.GunicornLogger`, deploy/Procfile).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote, unquote

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter
from gunicorn.glogging import Logger

MASK = "[redacted]"
# The path form (the token is the last segment) and the query parameter `t` wherever it
# appears in a URL.
_PATTERNS = (
    re.compile(r"(/dcaccount/)[^/?#\s\"']+", re.IGNORECASE),
    re.compile(r"([?&;]t=)[^&#\s\"']*"),
)
# A run of URL characters with a percent-escape in it: the server decodes the path
# (`/dc%61ccount/<token>` is routed to the DCACCOUNT view) and Django the query
# (`?%74=<token>` is `t`), so such a run is matched again once decoded.
_ESCAPED = re.compile(r"[^\s\"']*%[0-9A-Fa-f]{2}[^\s\"']*")
# Kept literal when a decoded run is written back; everything else (spaces, line breaks,
# quotes, "%") is escaped again, so a log line stays one line.
_URL_SAFE = "/?#[]@!$&()*+,;=:~"


def _redact_plain(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


def _redact_escaped(match: re.Match[str]) -> str:
    run = match.group(0)
    decoded = unquote(run)
    redacted = _redact_plain(decoded)
    return run if redacted == decoded else quote(redacted, safe=_URL_SAFE)


def redact(text: str) -> str:
    """`text` with every onboarding token in a URL replaced by MASK, escaped or not."""
    return _ESCAPED.sub(_redact_escaped, _redact_plain(text))


class RedactingFilter(logging.Filter):
    """Rewrite a record's message (arguments merged in) with redact(); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if isinstance(request, HttpRequest):
            # AdminEmailHandler writes the request's URL, GET and META into the mail: for a
            # request that carried a token the mail goes without it.
            url = request.get_full_path()
            if redact(url) != url:
                record.request = None
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's to report, as before
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


class GunicornLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's logger with the access log's URL atoms redacted."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U"):  # request line, path
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        if isinstance(atoms.get("q"), str):  # the query string, without its "?"
            atoms["q"] = redact("?" + atoms["q"])[1:]
        return atoms


class ExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error-report filter (DEFAULT_EXCEPTION_REPORTER_FILTER), with no cookie's value.

    Every cookie the portal sets is a credential: the self-service session and login
    token (accounts/web.py), the administrators' session, the CSRF values. Django cleanses
    only its own session cookie by name; error mails and the DEBUG page list the others.
    """

    def get_safe_cookies(self, request: HttpRequest) -> dict[str, Any]:
        return dict.fromkeys(super().get_safe_cookies(request), self.cleansed_substitute)
