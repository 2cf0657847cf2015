"""A real Dovecot, configured from deploy/dovecot/, logs in the accounts of our database."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from accounts import passwords
from accounts.dovecot import LOOPBACK, PrivateDovecot
from accounts.models import AccountStatus, MailAccount, MailboxState
from accounts.services.accounts import (
    create_account,
    delete_account,
    reset_password,
    set_password,
    set_status,
)
from providers.models import Provider

# Dovecot reads through its own connection: the rows must be committed.
pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "Balcony-at-midnight-42"
# Character 70 of this 80-character password (index 69) is changed below: a verifier that
# truncated (bcrypt stops at 72 bytes, some at 64) might still accept the changed one.
LONG_PASSWORD = ("Wherefore-art-thou-" * 5)[:80]


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def new_account(password: str = PASSWORD, local_part: str = "juliet") -> MailAccount:
    return create_account(
        domain="example.org", local_part=local_part, password=password, created_via="admin"
    )


@contextmanager
def imap_session(dovecot: PrivateDovecot, address: str, password: str) -> Iterator[IMAPClient]:
    """A logged-in IMAP session (AUTHENTICATE PLAIN: UTF-8 passwords), logged out after."""
    client = IMAPClient(LOOPBACK, port=dovecot.port, ssl=False, timeout=15)
    try:
        client.plain_login(address, password)
        yield client
    finally:
        client.logout()


def logs_in(dovecot: PrivateDovecot, address: str, password: str) -> bool:
    """True if IMAP accepts the login; False only for Dovecot's refusal, never a glitch."""
    client = IMAPClient(LOOPBACK, port=dovecot.port, ssl=False, timeout=15)
    try:
        client.plain_login(address, password)
    except LoginError as exc:
        # A temporary failure (database unreachable) must not pass for a refusal.
        assert "AUTHENTICATIONFAILED" in str(exc), str(exc)
        return False
    finally:
        client.logout()
    return True


def test_new_account_logs_in_over_imap_and_gets_a_maildir(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    account = new_account()

    client = IMAPClient(LOOPBACK, port=dovecot.port, ssl=False, timeout=15)
    try:
        client.login(account.address, PASSWORD)  # the LOGIN command; the others use PLAIN
        selected = client.select_folder("INBOX")
        folders = {name for _flags, _sep, name in client.list_folders()}
    finally:
        client.logout()

    assert selected[b"EXISTS"] == 0
    assert {"INBOX", "Sent", "Trash"} <= folders
    assert (dovecot.state_dir / "vmail" / "example.org" / "juliet" / "Maildir").is_dir()


def test_login_accepts_the_address_in_any_case(dovecot: PrivateDovecot, provider: Provider) -> None:
    new_account()

    assert logs_in(dovecot, "Juliet@Example.ORG", PASSWORD)


def test_login_refused_with_a_wrong_password(dovecot: PrivateDovecot, provider: Provider) -> None:
    account = new_account()

    assert not logs_in(dovecot, account.address, PASSWORD + "x")


def test_disabled_account_refused_until_enabled_again(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    account = new_account()
    assert logs_in(dovecot, account.address, PASSWORD)

    set_status(account=account, status=AccountStatus.DISABLED)
    assert not logs_in(dovecot, account.address, PASSWORD)

    set_status(account=account, status=AccountStatus.ACTIVE)
    assert logs_in(dovecot, account.address, PASSWORD)


def test_deleted_account_refused(dovecot: PrivateDovecot, provider: Provider) -> None:
    account = new_account()
    assert logs_in(dovecot, account.address, PASSWORD)

    delete_account(account=account)

    assert not logs_in(dovecot, account.address, PASSWORD)


def test_password_reset_refuses_the_old_password_and_accepts_the_new(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    account = new_account()
    assert logs_in(dovecot, account.address, PASSWORD)

    new_password = reset_password(account=account)

    assert not logs_in(dovecot, account.address, PASSWORD)
    assert logs_in(dovecot, account.address, new_password)


def test_set_password_refuses_the_old_password_and_accepts_the_new(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    account = new_account()

    set_password(account=account, password="Nightingale-not-lark-7")

    assert not logs_in(dovecot, account.address, PASSWORD)
    assert logs_in(dovecot, account.address, "Nightingale-not-lark-7")


@pytest.mark.parametrize(
    "password",
    [("Qz7-" * 16), "pässwörd-ünïcødé-🙂-long enough"],
    ids=["64-characters", "non-ascii"],
)
def test_long_and_non_ascii_passwords_log_in_exactly(
    dovecot: PrivateDovecot, provider: Provider, password: str
) -> None:
    account = new_account(password=password)

    assert logs_in(dovecot, account.address, password)
    assert dovecot.auth_test(account.address, password)


def test_password_differing_at_character_70_of_80_refused(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    assert len(LONG_PASSWORD) == 80
    changed = LONG_PASSWORD[:69] + ("#" if LONG_PASSWORD[69] != "#" else "%") + LONG_PASSWORD[70:]
    account = new_account(password=LONG_PASSWORD)

    assert logs_in(dovecot, account.address, LONG_PASSWORD)
    assert not logs_in(dovecot, account.address, changed)


def test_dovecot_verifies_the_stored_hash_of_a_new_account(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    account = new_account()
    stored = passwords.dovecot_form(account.password)

    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    assert dovecot.verify_hash(stored, PASSWORD)
    assert not dovecot.verify_hash(stored, PASSWORD + "x")
    assert dovecot.auth_test(account.address, PASSWORD)


def test_provider_quota_reaches_dovecot_and_imap(
    dovecot: PrivateDovecot, make_provider: Callable[..., Provider]
) -> None:
    make_provider(quota_mb=300)
    account = new_account()

    storage = [r for r in dovecot.quota(account.address) if r.kind == "STORAGE"]
    with imap_session(dovecot, account.address, PASSWORD) as client:
        _roots, quotas = client.get_quota_root("INBOX")

    assert [r.limit for r in storage] == [300 * 1024]  # KiB
    assert [(q.resource, q.limit) for q in quotas] == [("STORAGE", 300 * 1024)]


def test_quota_zero_means_no_limit_in_dovecot(
    dovecot: PrivateDovecot, make_provider: Callable[..., Provider]
) -> None:
    make_provider(quota_mb=0)
    account = new_account()

    assert {r.kind: r.limit for r in dovecot.quota(account.address)} == {
        "STORAGE": None,
        "MESSAGE": None,
    }


def test_sessions_lists_each_connected_session(dovecot: PrivateDovecot, provider: Provider) -> None:
    account = new_account()

    with (
        imap_session(dovecot, account.address, PASSWORD),
        imap_session(dovecot, account.address, PASSWORD),
    ):
        mine = [s for s in dovecot.sessions() if s.username == account.address]

    assert len(mine) == 2
    assert {(s.protocol, s.ip) for s in mine} == {("imap", LOOPBACK)}


# ----- open sessions end with the change (doveadm HTTP API) ---------------------------------


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server still sends until it closes the connection (or 10 s pass)."""
    received = b""
    connection.settimeout(10)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := connection.recv(4096):
            received += chunk
    return received


@contextmanager
def raw_session(dovecot: PrivateDovecot, address: str, password: str) -> Iterator[socket.socket]:
    """A logged-in IMAP connection as a plain socket, closed afterwards whatever happens."""
    with socket.create_connection((LOOPBACK, dovecot.port), timeout=10) as connection:
        assert connection.recv(4096).startswith(b"* OK")
        connection.sendall(f'a LOGIN "{address}" "{password}"\r\n'.encode())
        assert b"a OK" in connection.recv(4096)
        yield connection


@pytest.mark.parametrize("change", ["disable", "set_password", "delete"])
def test_a_change_that_refuses_logins_ends_open_sessions(
    dovecot: PrivateDovecot, dovecot_api: None, provider: Provider, change: str
) -> None:
    account = new_account()
    bystander = new_account(local_part="romeo")
    with (
        raw_session(dovecot, account.address, PASSWORD) as session,
        raw_session(dovecot, bystander.address, PASSWORD) as other,
    ):
        if change == "disable":
            set_status(account=account, status=AccountStatus.DISABLED)
        elif change == "set_password":
            set_password(account=account, password="Nightingale-not-lark-7")
        else:
            delete_account(account=account)

        assert b"* BYE" in read_until_closed(session)
        other.sendall(b"b NOOP\r\n")  # only that account's sessions end
        assert b"b OK" in other.recv(4096)
        assert wait_for(lambda: {s.username for s in dovecot.sessions()} == {bystander.address})


def wait_for(condition: Callable[[], bool], seconds: float = 5) -> bool:
    """Whether `condition` becomes true within `seconds` (Dovecot's books settle quickly)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_without_the_doveadm_api_a_change_still_commits(
    dovecot: PrivateDovecot, provider: Provider, settings: Any
) -> None:
    settings.DOVEADM_API_URL = f"http://{LOOPBACK}:9"  # configured, but nothing answers
    settings.DOVEADM_API_KEY = "a-key-that-reaches-nobody"
    account = new_account()

    set_status(account=account, status=AccountStatus.DISABLED)

    assert MailAccount.objects.get().status == AccountStatus.DISABLED
    assert not logs_in(dovecot, account.address, PASSWORD)


# ----- approval and unfinished creations (RELIABILITY.md check 4) ---------------------------


def test_an_account_awaiting_approval_logs_in_nowhere_until_approved(
    dovecot: PrivateDovecot, make_provider: Callable[..., Provider]
) -> None:
    make_provider(require_approval=True)
    account = create_account(
        domain="example.org", local_part="juliet", password=PASSWORD, created_via="api"
    )
    assert account.status == AccountStatus.APPROVAL

    # IMAP, and the passdb Postfix asks for SMTP AUTH (dovecot SASL): both refuse.
    assert not logs_in(dovecot, account.address, PASSWORD)
    assert not dovecot.auth_test(account.address, PASSWORD)

    set_status(account=account, status=AccountStatus.ACTIVE)

    assert logs_in(dovecot, account.address, PASSWORD)
    assert dovecot.auth_test(account.address, PASSWORD)


def test_an_account_still_being_created_does_not_log_in(
    dovecot: PrivateDovecot, provider: Provider
) -> None:
    account = new_account()
    MailAccount.objects.filter(pk=account.pk).update(mailbox_state=MailboxState.CREATING)

    assert not logs_in(dovecot, account.address, PASSWORD)
