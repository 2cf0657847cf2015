"""Onboarding tokens are masked in every logged URL (RELIABILITY.md check 9)."""

from __future__ import annotations

import logging

import pytest

from portal.redact import MASK, RedactingFilter, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("POST /dcaccount/AbC-_9xyz HTTP/1.1", f"POST /dcaccount/{MASK} HTTP/1.1"),
        ("POST /new_email?t=AbC-_9 HTTP/1.1", f"POST /new_email?t={MASK} HTTP/1.1"),
        ("/new_email?x=1&t=AbC&y=2", f"/new_email?x=1&t={MASK}&y=2"),
        ("Forbidden: /dcaccount/AbC", f"Forbidden: /dcaccount/{MASK}"),
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
