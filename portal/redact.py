"""Secrets that travel in URLs, kept out of every log line (RELIABILITY.md check 9).

An onboarding token is the credential of `POST /dcaccount/<token>` and of mailadm's
`POST /new_email?t=<token>`. Django's request logger, `runserver` and gunicorn's access log
all write the path (and gunicorn the query string): each goes through `redact`.

- `RedactingFilter`: a logging filter on the portal's handler (settings.LOGGING), so every
  record of every logger that reaches it is redacted, whoever made it.
- `GunicornLogger`: gunicorn's logger class with the request line, path and query string of
  the access log redacted (`--logger-class portal.redact.GunicornLogger`, deploy/Procfile).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gunicorn.glogging import Logger

MASK = "[redacted]"
# The path form (the token is the last segment) and the query parameter `t` wherever it
# appears in a URL, raw or percent-encoded by a client.
_PATTERNS = (
    re.compile(r"(/dcaccount/)[^/?#\s\"']+", re.IGNORECASE),
    re.compile(r"([?&;]t=)[^&#\s\"']*"),
)


def redact(text: str) -> str:
    """`text` with every onboarding token in a URL replaced by MASK."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrite a record's message (arguments merged in) with redact(); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
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
