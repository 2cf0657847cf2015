"""Onboarding sheet jobs: claimed once, passwords reset and printed, encrypted, one download."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from accounts import passwords
from accounts.models import MailAccount, SheetJob
from accounts.services import sheets
from accounts.services.accounts import create_account
from portal.errors import InvalidInput
from providers.models import Provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def accounts(make_provider: Callable[..., Provider]) -> list[MailAccount]:
    make_provider()
    return [
        create_account(
            domain="example.org",
            local_part=f"user{i}",
            password=f"old-password-{i}",
            created_via="admin",
        )
        for i in range(3)
    ]


def test_build_resets_each_password_and_keeps_only_an_encrypted_pdf(
    accounts: list[MailAccount], admin_user: User
) -> None:
    from tests.accounts.test_admin_sheets import login_of, pdf_codes

    job = sheets.start_sheet(account_ids=[a.pk for a in accounts], created_by=admin_user)
    built = sheets.build_sheet(job_id=job.pk)

    assert built is not None and built.state == SheetJob.State.DONE
    assert (built.done, built.failed, built.total) == (3, 0, 3)
    stored = bytes(SheetJob.objects.get(pk=job.pk).content or b"")
    assert not stored.startswith(b"%PDF") and b"dclogin" not in stored
    pdf = sheets.take_sheet(job_id=job.pk, user=admin_user)
    codes = pdf_codes(pdf)
    for account, code in zip(accounts, codes, strict=True):
        account.refresh_from_db()
        password = login_of(code)[1]["p"][0]
        assert passwords.verify_password(password, account.password)
        assert password.encode() not in stored
        assert not passwords.verify_password(
            f"old-password-{account.local_part[4:]}", account.password
        )


def test_a_second_delivery_of_the_task_does_nothing(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)
    assert sheets.build_sheet(job_id=job.pk) is not None
    changed = MailAccount.objects.get(pk=accounts[0].pk).password

    assert sheets.build_sheet(job_id=job.pk) is None
    assert MailAccount.objects.get(pk=accounts[0].pk).password == changed


def test_a_stalled_job_is_taken_up_again_but_a_running_one_is_not(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)
    SheetJob.objects.filter(pk=job.pk).update(state=SheetJob.State.RUNNING)
    assert sheets.build_sheet(job_id=job.pk) is None  # someone is at it

    stalled = timezone.now() - timedelta(seconds=sheets.STALL_AFTER + 5)
    SheetJob.objects.filter(pk=job.pk).update(updated_at=stalled)
    assert sheets.build_sheet(job_id=job.pk) is not None


def test_vanished_accounts_are_counted_as_failed(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = sheets.start_sheet(account_ids=[a.pk for a in accounts], created_by=admin_user)
    MailAccount.objects.filter(pk=accounts[1].pk).delete()

    built = sheets.build_sheet(job_id=job.pk)

    assert built is not None and (built.done, built.failed) == (2, 1)
    assert "1 account(s) no longer exist." in built.problems


def test_an_expired_sheet_is_neither_built_nor_downloaded_and_is_purged(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)
    sheets.build_sheet(job_id=job.pk)
    SheetJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(sheets.SheetGone):
        sheets.take_sheet(job_id=job.pk, user=admin_user)
    assert sheets.purge_sheets() == 1
    assert not SheetJob.objects.exists()


def test_start_refuses_an_empty_selection(admin_user: User) -> None:
    with pytest.raises(InvalidInput):
        sheets.start_sheet(account_ids=[], created_by=admin_user)
    assert not SheetJob.objects.exists()


def test_start_enqueues_the_task_only_after_commit(
    accounts: list[MailAccount], admin_user: User, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)

    assert len(callbacks) == 1
    assert SheetJob.objects.get().state == SheetJob.State.QUEUED


def test_the_task_builds_the_sheet_in_eager_mode(
    accounts: list[MailAccount], admin_user: User, settings: Any
) -> None:
    from accounts import tasks

    settings.CELERY_TASK_ALWAYS_EAGER = True
    job = SheetJob.objects.create(
        created_by=admin_user,
        account_ids=[accounts[0].pk],
        total=1,
        expires_at=timezone.now() + timedelta(hours=1),
    )

    assert tasks.build_sheet.delay(job.pk).get() == "done"
    assert tasks.purge_sheets.delay().get() == 0
