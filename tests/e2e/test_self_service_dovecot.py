"""Self-service against the real Dovecot: a new password reaches IMAP at once, and storage
used is Dovecot's own count (specs/account-api.md; RELIABILITY.md check 16)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client

from accounts.dovecot import LOOPBACK, PrivateDovecot
from accounts.models import AccountSession, MailAccount
from accounts.services.accounts import create_account
from providers.models import Provider
from tests.accounts.mailbox.test_sql import append_message, fresh_local_part
from tests.accounts.self_service import API, PASSWORD, logged_in, page_login, post_json
from tests.accounts.test_dovecot import logs_in, read_until_closed

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]
NEW_PASSWORD = "Nightingale-not-lark-7"


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    settings.RATELIMIT_ENABLE = False


@pytest.fixture
def owner(make_provider: Callable[..., Provider]) -> MailAccount:
    make_provider(quota_mb=300)
    return create_account(
        domain="example.org", local_part=fresh_local_part(), password=PASSWORD, created_via="admin"
    )


def test_set_password_ends_other_sessions_keeps_this_one_and_dovecot_takes_only_the_new(
    dovecot: PrivateDovecot, dovecot_api: None, owner: MailAccount
) -> None:
    mine, other = Client(), Client()
    logged_in(mine, owner.address)
    logged_in(other, owner.address)
    with socket.create_connection((LOOPBACK, dovecot.port), timeout=10) as phone:
        # A mail app logged in with the old password before the change.
        assert phone.recv(4096).startswith(b"* OK")
        phone.sendall(f'a LOGIN "{owner.address}" "{PASSWORD}"\r\n'.encode())
        assert b"a OK" in phone.recv(4096)

        response = post_json(
            mine, f"{API}/password", {"currentPassword": PASSWORD, "password": NEW_PASSWORD}
        )

        assert response.status_code == HTTPStatus.NO_CONTENT
        assert b"* BYE" in read_until_closed(phone)  # doveadm ended the app's session at once
    refused = other.get(API)
    assert refused.status_code == HTTPStatus.UNAUTHORIZED
    assert refused.json()["code"] == "user:badAuth"
    assert mine.get(API).status_code == HTTPStatus.OK
    assert AccountSession.objects.count() == 1
    assert not logs_in(dovecot, owner.address, PASSWORD)
    assert logs_in(dovecot, owner.address, NEW_PASSWORD)
    assert not dovecot.auth_test(owner.address, PASSWORD)  # SMTP AUTH's passdb too
    assert dovecot.auth_test(owner.address, NEW_PASSWORD)


@pytest.mark.parametrize(
    "password",
    ["Qz7-" * 16, "pässwörd-ünïcødé-🙂-long enough"],
    ids=["64 characters", "non-ASCII"],
)
def test_a_password_set_by_the_owner_logs_in_to_dovecot_exactly(
    dovecot: PrivateDovecot, owner: MailAccount, password: str
) -> None:
    client = Client()
    logged_in(client, owner.address)

    response = post_json(
        client, f"{API}/password", {"currentPassword": PASSWORD, "password": password}
    )

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert dovecot.auth_test(owner.address, password)
    assert not dovecot.auth_test(owner.address, password[:-1] + "#")


def test_storage_used_rises_after_a_message_is_appended_over_imap(
    dovecot: PrivateDovecot, dovecot_api: None, owner: MailAccount
) -> None:
    client = Client()
    logged_in(client, owner.address)
    before = client.get(API).json()
    message = b"From: romeo@example.org\r\nSubject: hi\r\n\r\n" + b"O Romeo, Romeo\r\n" * 1000

    append_message(dovecot, owner.address, PASSWORD, message)
    after = client.get(API).json()

    assert before["storageUsed"] == 0
    assert after["storageUsed"] >= before["storageUsed"] + len(message)
    assert after["storageLimit"] == before["storageLimit"] == 300 * 1024 * 1024
    page = _overview(owner)
    assert f'value="{after["storageUsed"]}"' in page


def _overview(owner: MailAccount) -> str:
    browser = Client()
    page_login(browser, owner.address)
    return browser.get("/account/").content.decode()
