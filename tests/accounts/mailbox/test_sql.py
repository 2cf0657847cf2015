"""The `sql` backend's questions to Dovecot (doveadm's HTTP API), against the private Dovecot."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from imapclient import IMAPClient

from accounts.dovecot import LOOPBACK, PrivateDovecot
from accounts.mailbox import MailboxError, get_backend
from accounts.mailbox.base import Usage
from accounts.services.accounts import create_account
from providers.models import Provider

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]
PASSWORD = "Balcony-at-midnight-42"


def fresh_local_part() -> str:
    """A name no other test used: the session's Dovecot keeps mail on disk between tests, and
    a test that stores mail must not leave it in another test's juliet@example.org."""
    return f"append-{secrets.token_hex(4)}"


def append_message(dovecot: PrivateDovecot, address: str, password: str, message: bytes) -> None:
    """Log in over IMAP and APPEND `message` to INBOX, as a mail client stores a draft."""
    client = IMAPClient(LOOPBACK, port=dovecot.port, ssl=False, timeout=15)
    try:
        client.login(address, password)
        client.append("INBOX", message)
    finally:
        client.logout()


MESSAGE = b"From: romeo@example.org\r\nSubject: hello\r\n\r\n" + b"Wherefore art thou\r\n" * 400


def test_sql_usage_is_dovecots_count_and_rises_with_an_appended_message(
    dovecot: PrivateDovecot, dovecot_api: None, make_provider: Callable[..., Provider]
) -> None:
    make_provider(quota_mb=300)
    account = create_account(
        domain="example.org", local_part=fresh_local_part(), password=PASSWORD, created_via="admin"
    )
    before = get_backend().usage(account.address)
    append_message(dovecot, account.address, PASSWORD, MESSAGE)

    after = get_backend().usage(account.address)

    assert before == Usage(used_bytes=0, limit_bytes=300 * 1024 * 1024)
    assert after is not None
    # Dovecot counts KiB: the message's size, rounded to whole KiB.
    assert len(MESSAGE) <= after.used_bytes < len(MESSAGE) + 2048
    storage = [r for r in dovecot.quota(account.address) if r.kind == "STORAGE"]
    assert [r.value * 1024 for r in storage] == [after.used_bytes]  # the same as `doveadm`


def test_sql_usage_without_the_doveadm_api_is_unknown(settings: Any) -> None:
    settings.DOVEADM_API_URL = ""
    assert get_backend().usage("juliet@example.org") is None


def test_sql_usage_with_the_api_unreachable_is_a_mailbox_error(
    settings: Any, free_port: int
) -> None:
    settings.DOVEADM_API_URL = f"http://{LOOPBACK}:{free_port}"
    settings.DOVEADM_API_KEY = "a-key-that-reaches-nobody"
    with pytest.raises(MailboxError, match="did not report the usage"):
        get_backend().usage("juliet@example.org")


def test_sql_usage_of_an_unknown_user_is_a_mailbox_error(
    dovecot: PrivateDovecot, dovecot_api: None
) -> None:
    with pytest.raises(MailboxError):
        get_backend().usage("nobody@example.org")
