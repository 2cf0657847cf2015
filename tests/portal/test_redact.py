"""Onboarding tokens are masked in every logged URL (RELIABILITY.md check 9)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.log import log_response

from portal.redact import MASK, RedactingFilter, redact

SECRET = "Xy7-SeCrEtToKeN_0123456789abcdefgh"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("POST /dcaccount/AbC-_9xyz HTTP/1.1", f"POST /dcaccount/{MASK} HTTP/1.1"),
        ("POST /new_email?t=AbC-_9 HTTP/1.1", f"POST /new_email?t={MASK} HTTP/1.1"),
        ("/new_email?x=1&t=AbC&y=2", f"/new_email?x=1&t={MASK}&y=2"),
        ("Forbidden: /dcaccount/AbC", f"Forbidden: /dcaccount/{MASK}"),
        # Percent-escapes the server or Django decode before routing (RELIABILITY.md check 9).
        ("POST /dc%61ccount/AbC HTTP/1.1", f"POST /dcaccount/{MASK} HTTP/1.1"),
        ("POST /dcaccount%2FAbC HTTP/1.1", f"POST /dcaccount/{MASK} HTTP/1.1"),
        ("POST /new_email?%74=AbC HTTP/1.1", f"POST /new_email?t={MASK} HTTP/1.1"),
        ("/new_email?x=%41&%74=AbC&y=2", f"/new_email?x=A&t={MASK}&y=2"),
        ("/register/demo/?first_name=%41nna", "/register/demo/?first_name=%41nna"),
        ("/register/demo/?first_name=t", "/register/demo/?first_name=t"),
        ("GET /api/v1/suggestions?last=1", "GET /api/v1/suggestions?last=1"),
    ],
)
def test_redact_masks_tokens_and_nothing_else(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_filter_rewrites_a_record_with_arguments() -> None:
    record = logging.LogRecord(
        "django.request",
        logging.WARNING,
        __file__,
        1,
        "%s: %s",
        ("Gone", "/dcaccount/SeCrEt"),
        None,
    )

    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"Gone: /dcaccount/{MASK}"
    assert "SeCrEt" not in str(record.__dict__)


@contextmanager
def output_of(logger_name: str) -> Iterator[io.StringIO]:
    """What the configured stream handlers of `logger_name` write, for the block."""
    buffer = io.StringIO()
    handlers = [
        handler
        for handler in logging.getLogger(logger_name).handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    assert handlers, f"{logger_name} has no stream handler"
    # Swapped without setStream, which flushes the old stream: one a previous test's
    # capture may have closed.
    saved = [handler.stream for handler in handlers]
    for handler in handlers:
        handler.stream = buffer
    try:
        yield buffer
    finally:
        for handler, stream in zip(handlers, saved, strict=True):
            handler.stream = stream


def test_every_configured_handler_redacts() -> None:
    for name, handler in django_settings.LOGGING["handlers"].items():
        assert "redact" in handler.get("filters", []), name


def test_every_handler_of_the_configured_loggers_redacts() -> None:
    """Also a handler Django configured before ours (DEFAULT_LOGGING), if one remained.

    (Libraries' own loggers, such as redis-py's `push_response`, log nothing of requests.)
    """
    names = ["", *django_settings.LOGGING["loggers"], "django.request"]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if type(handler).__module__.startswith("_pytest"):
                continue  # pytest's log capture
            if isinstance(handler, logging.NullHandler):
                continue  # writes nothing (Celery adds one to its loggers once it runs a task)
            assert any(isinstance(f, RedactingFilter) for f in handler.filters), (
                f"{name or 'root'}: {handler!r}"
            )


@pytest.mark.parametrize(
    "request_line",
    [
        f"POST /dcaccount/{SECRET} HTTP/1.1",
        f"POST /dc%61ccount/{SECRET} HTTP/1.1",
        f"POST /new_email?%74={SECRET} HTTP/1.1",
    ],
)
def test_runservers_request_lines_are_redacted(request_line: str) -> None:
    # As django.core.servers.basehttp.WSGIRequestHandler.log_message logs them.
    with output_of("django.server") as output:
        logging.getLogger("django.server").info(
            '"%s" %s %s',
            request_line,
            "403",
            "120",
            extra={"request": None, "server_time": "01/Jan/2025 00:00:00", "status_code": 403},
        )

    assert SECRET not in output.getvalue()
    assert MASK in output.getvalue()


def test_the_django_loggers_console_copy_is_redacted_in_debug(settings: Any) -> None:
    settings.DEBUG = True
    request = RequestFactory().post(f"/dcaccount/{SECRET}")

    with output_of("django") as output:
        log_response(
            "Forbidden: %s", request.path, response=HttpResponse(status=403), request=request
        )

    assert output.getvalue().strip() == f"Forbidden: /dcaccount/{MASK}"


def test_error_mails_carry_neither_the_token_nor_its_request(settings: Any) -> None:
    settings.DEBUG = False
    settings.ADMINS = [("Admin", "admin@example.org")]
    request = RequestFactory().post(f"/new_email?%74={SECRET}")

    log_response(
        "Internal Server Error: %s",
        request.get_full_path(),
        response=HttpResponse(status=500),
        request=request,
    )

    [message] = mail.outbox
    assert SECRET not in message.subject and SECRET not in message.body
    assert f"t={MASK}" in message.subject


def test_error_mails_of_other_requests_keep_the_request(settings: Any) -> None:
    settings.DEBUG = False
    settings.ADMINS = [("Admin", "admin@example.org")]
    request = RequestFactory().get("/register/demo/?step=2")

    log_response(
        "Internal Server Error: %s",
        request.path,
        response=HttpResponse(status=500),
        request=request,
    )

    [message] = mail.outbox
    assert "step = '2'" in message.body  # the request's GET, as Django writes it
