"""Temporary accounts: disabled when their lifetime ends, deleted a grace period later."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import AccountStatus, MailAccount
from accounts.services.accounts import create_account
from accounts.services.lifetime import end_expired_accounts
from providers.models import Provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def make_account(make_provider: Callable[..., Provider]) -> Callable[..., MailAccount]:
    make_provider()

    def make(name: str, *, lifetime: timedelta | None) -> MailAccount:
        expires = timezone.now() + lifetime if lifetime is not None else None
        return create_account(
            domain="example.org",
            local_part=name,
            password=f"temporary-{name}-pw",
            created_via="qr",
            expires_at=expires,
        )

    return make


def test_lifetime_end_disables_then_the_grace_period_deletes(
    make_account: Callable[..., MailAccount], mail_server: Any, settings: Any
) -> None:
    settings.TEMPORARY_ACCOUNT_GRACE = timedelta(days=7)
    temporary = make_account("temp", lifetime=timedelta(hours=1))
    permanent = make_account("perm", lifetime=None)
    later = make_account("later", lifetime=timedelta(days=30))

    early = end_expired_accounts(at=timezone.now())
    assert (early.disabled, early.deleted) == ([], [])

    after_an_hour = end_expired_accounts(at=timezone.now() + timedelta(hours=2))
    assert after_an_hour.disabled == ["temp@example.org"]
    temporary.refresh_from_db()
    assert temporary.status == AccountStatus.DISABLED
    assert mail_server.mailboxes()["temp@example.org"]["enabled"] is False

    again = end_expired_accounts(at=timezone.now() + timedelta(hours=3))
    assert (again.disabled, again.deleted) == ([], [])  # idempotent

    after_grace = end_expired_accounts(at=timezone.now() + timedelta(days=8))
    assert after_grace.deleted == ["temp@example.org"]
    assert "temp@example.org" not in mail_server.mailboxes()
    assert set(MailAccount.objects.values_list("local_part", flat=True)) == {"perm", "later"}
    permanent.refresh_from_db()
    later.refresh_from_db()
    assert permanent.status == later.status == AccountStatus.ACTIVE


def test_the_command_and_the_task_run_the_same_pass(
    make_account: Callable[..., MailAccount], capsys: Any, settings: Any
) -> None:
    from accounts import tasks

    settings.CELERY_TASK_ALWAYS_EAGER = True
    make_account("gone", lifetime=timedelta(hours=1))
    MailAccount.objects.update(expires_at=timezone.now() - timedelta(minutes=1))

    call_command("end_expired_accounts")
    assert "1 disabled, 0 deleted, 0 errors" in capsys.readouterr().out

    MailAccount.objects.update(expires_at=timezone.now() - timedelta(days=30))
    assert tasks.end_expired_accounts.delay().get() == {"disabled": 0, "deleted": 1}
    assert not MailAccount.objects.exists()


def test_a_pass_takes_the_accounts_whose_lifetime_ended_first(
    make_account: Callable[..., MailAccount], mail_server: Any
) -> None:
    # Neither the order they were made in nor the model's (by address) is the order of
    # their ends.
    for name, hours in [("alice", 3), ("carol", 1), ("bob", 2)]:
        make_account(name, lifetime=timedelta(hours=hours))

    report = end_expired_accounts(at=timezone.now() + timedelta(hours=4), batch=2)

    assert report.disabled == ["carol@example.org", "bob@example.org"]
    assert MailAccount.objects.get(local_part="alice").status == AccountStatus.ACTIVE


def test_accounts_the_mail_server_refuses_do_not_hold_up_the_others(
    make_account: Callable[..., MailAccount], mail_server: Any
) -> None:
    for name, hours in [("lost1", 1), ("lost2", 2), ("ok1", 3), ("ok2", 4)]:
        make_account(name, lifetime=timedelta(hours=hours))
    # The mail server lost the first two mailboxes: disabling them is refused, every pass.
    boxes = mail_server.mailboxes()
    del boxes["lost1@example.org"], boxes["lost2@example.org"]
    mail_server.state.write_text(json.dumps(boxes), encoding="utf-8")
    later = timezone.now() + timedelta(hours=5)

    first = end_expired_accounts(at=later, batch=3)
    second = end_expired_accounts(at=later, batch=3)

    assert first.disabled == ["ok1@example.org", "ok2@example.org"]
    assert [error.split(":")[0] for error in first.errors] == [
        "lost1@example.org",
        "lost2@example.org",
    ]
    assert second.disabled == [] and len(second.errors) == 2  # still reported, tried again
    assert mail_server.mailboxes()["ok2@example.org"]["enabled"] is False
