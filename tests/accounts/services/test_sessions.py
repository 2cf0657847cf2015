"""accounts.services.sessions and the session side of accounts.services.accounts."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from accounts import passwords
from accounts.models import AccountSession, AccountStatus, MailAccount
from accounts.services import accounts, sessions
from accounts.services.sessions import BadAuth, BadLogin, ClientInfo, CSRFRefused, NoAuth
from accounts.tasks import purge_sessions as purge_task
from portal.errors import InvalidInput, NotFound
from tests.accounts.self_service import PASSWORD

pytestmark = pytest.mark.django_db
CLIENT = ClientInfo(ip="192.0.2.1", user_agent="Thunderbird/128")


def test_log_in_stores_only_the_tokens_hash_and_who_logged_in(owner: MailAccount) -> None:
    new = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)

    row = AccountSession.objects.get()
    assert row.token_hash == hashlib.sha256(new.token.encode()).hexdigest()
    assert (row.ip, row.user_agent) == ("192.0.2.1", "Thunderbird/128")
    assert new.csrf_token == sessions.csrf_token_for(new.token) != new.token
    assert len(new.token) >= 43 and new.token not in repr(new)
    assert sessions.authenticate(token=new.token).pk == row.pk


def test_log_in_runs_the_hasher_once_against_a_dummy_hash_for_an_unknown_name(
    owner: MailAccount,
) -> None:
    # The dummy hash is a real argon2id hash with today's parameters (same cost).
    dummy = passwords.dummy_hash()
    assert dummy.startswith("argon2$argon2id$v=19$m=19456,t=2,p=1$")
    with pytest.raises(BadLogin) as unknown:
        sessions.log_in(username="nobody@example.org", password=PASSWORD, client=CLIENT)
    with pytest.raises(BadLogin) as wrong:
        sessions.log_in(username="juliet@example.org", password="wrong", client=CLIENT)
    assert unknown.value.message == wrong.value.message


def test_log_in_ends_the_session_it_replaces(owner: MailAccount, stranger: MailAccount) -> None:
    first = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    romeo = sessions.log_in(username="romeo@example.org", password=PASSWORD, client=CLIENT)

    second = sessions.log_in(
        username="juliet@example.org", password=PASSWORD, client=CLIENT, replaces=first.token
    )

    assert second.token != first.token
    with pytest.raises(BadAuth):
        sessions.authenticate(token=first.token)
    assert sessions.authenticate(token=romeo.token)  # another's session is untouched


def test_authenticate_without_token_is_no_auth_and_with_an_unknown_one_bad_auth() -> None:
    with pytest.raises(NoAuth):
        sessions.authenticate(token=None)
    with pytest.raises(BadAuth):
        sessions.authenticate(token="not-a-session")


def test_authenticate_moves_the_expiry_at_most_once_a_minute(
    owner: MailAccount, settings: Any
) -> None:
    settings.ACCOUNT_SESSION_IDLE_SECONDS = 600
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        new = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        early = sessions.authenticate(token=new.token)
    with time_machine.travel(start + timedelta(seconds=90), tick=False):
        later = sessions.authenticate(token=new.token)

    assert early.expires_at == start + timedelta(seconds=600)  # no write for 30 s
    assert later.expires_at == start + timedelta(seconds=690)
    assert AccountSession.objects.get().last_used_at == start + timedelta(seconds=90)


def test_check_csrf_accepts_only_the_sessions_own_value(owner: MailAccount) -> None:
    one = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    two = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)

    sessions.check_csrf(token=one.token, csrf_token=one.csrf_token)
    for token, csrf in [(one.token, two.csrf_token), (one.token, ""), (None, one.csrf_token)]:
        with pytest.raises(CSRFRefused):
            sessions.check_csrf(token=token, csrf_token=csrf)


def test_login_tokens_are_single_use() -> None:
    token = sessions.issue_login_token()
    sessions.consume_login_token(token=token, cookie=token)
    with pytest.raises(CSRFRefused):
        sessions.consume_login_token(token=token, cookie=token)


def test_end_other_sessions_keeps_the_one_named(owner: MailAccount, stranger: MailAccount) -> None:
    keep = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    romeo = sessions.log_in(username="romeo@example.org", password=PASSWORD, client=CLIENT)

    ended = sessions.end_other_sessions(account=owner, keep=keep.session)

    assert ended == 1
    assert {s.pk for s in AccountSession.objects.all()} == {keep.session.pk, romeo.session.pk}


def test_revoke_session_refuses_another_accounts_session(
    owner: MailAccount, stranger: MailAccount
) -> None:
    romeo = sessions.log_in(username="romeo@example.org", password=PASSWORD, client=CLIENT)
    with pytest.raises(NotFound):
        sessions.revoke_session(account=owner, session_id=romeo.session.pk)
    assert AccountSession.objects.filter(pk=romeo.session.pk).exists()


@pytest.mark.parametrize("status", [AccountStatus.DISABLED, AccountStatus.APPROVAL])
def test_set_status_other_than_active_ends_every_session(
    owner: MailAccount, status: AccountStatus
) -> None:
    sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)

    accounts.set_status(account=owner, status=status)

    assert not AccountSession.objects.exists()


def test_an_administrators_password_reset_ends_every_session(owner: MailAccount) -> None:
    sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    accounts.reset_password(account=owner)
    assert not AccountSession.objects.exists()


def test_change_full_name_refuses_control_characters_and_long_names(owner: MailAccount) -> None:
    for name in ("Juliet\nCapulet", "x" * 201, "Ju\u200bliet"):
        with pytest.raises(InvalidInput):
            accounts.change_full_name(account=owner, full_name=name)
    owner.refresh_from_db()
    assert owner.full_name == "Juliet Capulet"
    accounts.change_full_name(account=owner, full_name="Джульетта 🙂")
    assert MailAccount.objects.get(pk=owner.pk).full_name == "Джульетта 🙂"


def test_purge_sessions_deletes_only_expired_rows(owner: MailAccount) -> None:
    live = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    old = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    AccountSession.objects.filter(pk=old.session.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert sessions.purge_sessions() == 1
    assert list(AccountSession.objects.values_list("pk", flat=True)) == [live.session.pk]


def test_purge_sessions_task_calls_the_service(owner: MailAccount) -> None:
    new = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    AccountSession.objects.filter(pk=new.session.pk).update(expires_at=timezone.now())

    assert purge_task.apply().get() == 1
    assert not AccountSession.objects.exists()


def test_purge_sessions_command_reports_the_count(owner: MailAccount) -> None:
    new = sessions.log_in(username="juliet@example.org", password=PASSWORD, client=CLIENT)
    AccountSession.objects.filter(pk=new.session.pk).update(expires_at=timezone.now())
    out = StringIO()

    call_command("purge_sessions", stdout=out)

    assert out.getvalue().strip() == "purged 1 expired sessions"
    assert not AccountSession.objects.exists()


def test_a_login_token_used_by_many_at_once_lets_exactly_one_through() -> None:
    token = sessions.issue_login_token()

    def use() -> bool:
        try:
            sessions.consume_login_token(token=token, cookie=token)
        except CSRFRefused:
            return False
        return True

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: use(), range(10)))

    assert results.count(True) == 1


def test_a_refused_login_is_logged_on_one_line_without_the_password(
    owner: MailAccount, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="accounts.services.sessions")
    for name in ("juliet@example.org", "evil\nforged line@example.org"):
        with pytest.raises(BadLogin):
            sessions.log_in(username=name, password="Canary-wrong-42", client=CLIENT)

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert all("\n" not in line and "192.0.2.1" in line for line in lines)
    assert "wrong password" in lines[0] and "unknown" in lines[1]
    assert "Canary-wrong-42" not in caplog.text
