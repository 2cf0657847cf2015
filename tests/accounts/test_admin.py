"""The mail-account console: create through the service, passwords shown once, actions."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import pytest

from accounts import passwords
from accounts.models import AccountStatus, MailAccount, MailboxState, ThirdPartyID
from accounts.services.accounts import create_account

CHANGELIST = "/admin/accounts/mailaccount/"
ADD = "/admin/accounts/mailaccount/add/"


@pytest.fixture
def provider(make_provider: Any) -> Any:
    return make_provider(domains=("example.org",))


@pytest.fixture
def account(provider: Any) -> MailAccount:
    return create_account(
        domain="example.org",
        local_part="juliet",
        password="balcony-at-midnight",
        created_via="api",
        third_pids=[("email", "juliet@capulet.example")],
    )


def shown_password(response: Any) -> str:
    found = re.search(r"<code>([^<]+)</code>", response.content.decode())
    assert found, response.content.decode()
    return found.group(1)


def test_admin_creates_account_with_generated_password_shown_once(
    admin_client: Any, provider: Any
) -> None:
    domain = provider.domains.get()

    response = admin_client.post(
        ADD,
        {"domain": domain.pk, "local_part": "Romeo", "full_name": "Romeo Montague", "password": ""},
    )

    assert response.status_code == HTTPStatus.OK
    assert "no-store" in response["Cache-Control"]
    created = MailAccount.objects.get(local_part="romeo")
    password = shown_password(response)
    assert created.created_via == "admin"
    assert passwords.verify_password(password, created.password)
    assert password not in created.password


@pytest.mark.parametrize(
    ("local_part", "message"),
    [
        ("juliet", "already taken"),
        ("postmaster", "reserved"),
        ("Post.Master", "reserved"),
        ("x", "3 to 32 characters"),
        ("ju..liet", "two punctuation marks"),
    ],
)
def test_admin_add_explains_a_refused_name_and_creates_nothing(
    admin_client: Any, account: MailAccount, local_part: str, message: str
) -> None:
    response = admin_client.post(
        ADD,
        {"domain": account.domain_id, "local_part": local_part, "password": "another-long-secret"},
    )

    assert response.status_code == HTTPStatus.OK
    assert message in response.content.decode()
    assert MailAccount.objects.count() == 1


def test_admin_add_refuses_a_weak_password(admin_client: Any, provider: Any) -> None:
    response = admin_client.post(
        ADD, {"domain": provider.domains.get().pk, "local_part": "romeo", "password": "password"}
    )

    assert "too common" in response.content.decode()
    assert not MailAccount.objects.exists()


def test_admin_search_finds_by_address_and_third_party_id(
    admin_client: Any, account: MailAccount
) -> None:
    by_address = admin_client.get(CHANGELIST, {"q": "juliet@example.org"})
    by_pid = admin_client.get(CHANGELIST, {"q": "capulet.example"})
    nothing = admin_client.get(CHANGELIST, {"q": "romeo"})

    assert "juliet@example.org" in by_address.content.decode()
    assert "juliet@example.org" in by_pid.content.decode()
    assert "juliet@example.org" not in nothing.content.decode()


def test_admin_never_displays_the_hash(admin_client: Any, account: MailAccount) -> None:
    change = admin_client.get(f"{CHANGELIST}{account.pk}/change/")

    assert change.status_code == HTTPStatus.OK
    assert "argon2" not in change.content.decode()
    assert "juliet@capulet.example" in change.content.decode()


def action(client: Any, name: str, accounts: list[MailAccount]) -> Any:
    return client.post(
        CHANGELIST, {"action": name, "_selected_action": [a.pk for a in accounts]}, follow=True
    )


def test_admin_disable_and_enable_report_counts(admin_client: Any, account: MailAccount) -> None:
    first = action(admin_client, "disable_accounts", [account])
    again = action(admin_client, "disable_accounts", [account])

    assert "1 changed, 0 already disabled" in first.content.decode()
    assert "0 changed, 1 already disabled" in again.content.decode()
    account.refresh_from_db()
    assert account.status == AccountStatus.DISABLED

    action(admin_client, "enable_accounts", [account])
    account.refresh_from_db()
    assert account.status == AccountStatus.ACTIVE


def test_admin_reset_password_shows_new_one_and_old_one_stops(
    admin_client: Any, account: MailAccount
) -> None:
    response = action(admin_client, "reset_passwords", [account])

    new_password = shown_password(response)
    account.refresh_from_db()
    assert "no-store" in response["Cache-Control"]
    assert passwords.verify_password(new_password, account.password)
    assert not passwords.verify_password("balcony-at-midnight", account.password)


def test_admin_delete_removes_account_and_its_ids(admin_client: Any, account: MailAccount) -> None:
    response = admin_client.post(f"{CHANGELIST}{account.pk}/delete/", {"post": "yes"})

    assert response.status_code == HTTPStatus.FOUND
    assert not MailAccount.objects.exists()
    assert not ThirdPartyID.objects.exists()


def test_admin_lists_reserved_names(admin_client: Any) -> None:
    assert admin_client.get("/admin/accounts/reservedname/").status_code == HTTPStatus.OK


def test_admin_approves_only_accounts_awaiting_approval(
    admin_client: Any, make_provider: Any
) -> None:
    make_provider(domains=("example.org",), require_approval=True)
    waiting = create_account(
        domain="example.org", local_part="juliet", password="balcony-at-midnight", created_via="api"
    )
    disabled = create_account(
        domain="example.org", local_part="romeo", password="balcony-at-midnight", created_via="api"
    )
    MailAccount.objects.filter(pk=disabled.pk).update(status=AccountStatus.DISABLED)
    listed = admin_client.get(f"{CHANGELIST}?status__exact=approval").content.decode()
    assert "juliet@example.org" in listed
    assert "romeo@example.org" not in listed

    response = action(admin_client, "approve_accounts", [waiting, disabled])

    assert "1 approved, 1 skipped (not awaiting approval)" in response.content.decode()
    statuses = dict(MailAccount.objects.values_list("local_part", "status"))
    assert statuses == {"juliet": AccountStatus.ACTIVE, "romeo": AccountStatus.DISABLED}


def test_admin_delete_refused_by_the_mail_server_keeps_the_account(
    admin_client: Any, account: MailAccount, settings: Any, tmp_path: Any
) -> None:
    script = tmp_path / "refuse.py"
    script.write_text("import sys; sys.exit('mailbox is on legal hold')\n")
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = f"python3 {script}"

    response = admin_client.post(f"{CHANGELIST}{account.pk}/delete/", {"post": "yes"}, follow=True)

    assert "mailbox is on legal hold" in response.content.decode()
    account.refresh_from_db()
    assert account.mailbox_state == MailboxState.READY
    assert ThirdPartyID.objects.filter(account=account).exists()


def test_admin_filters_accounts_by_mailbox_state(admin_client: Any, account: MailAccount) -> None:
    MailAccount.objects.update(mailbox_state=MailboxState.CREATING)

    listed = admin_client.get(f"{CHANGELIST}?mailbox_state__exact=creating").content.decode()

    assert "juliet@example.org" in listed
    assert "being created" in listed
