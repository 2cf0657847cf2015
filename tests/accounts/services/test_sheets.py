"""Onboarding sheet jobs: claimed once, passwords reset and printed, encrypted, one download;
runs that overlap or fail, and the sweep that restarts or fails lost ones."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.db import OperationalError, connection
from django.utils import timezone

from accounts import passwords
from accounts.models import MailAccount, SheetJob
from accounts.services import sheets
from accounts.services.accounts import create_account
from portal.errors import InvalidInput
from providers.models import Provider
from tests.accounts.test_admin_sheets import login_of, pdf_codes

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


def queued_job(accounts: list[MailAccount], user: User, **fields: Any) -> SheetJob:
    """A queued job as start_sheet makes it, without sending its task."""
    values = {
        "created_by": user,
        "account_ids": [account.pk for account in accounts],
        "total": len(accounts),
        "expires_at": timezone.now() + timedelta(hours=1),
        **fields,
    }
    return SheetJob.objects.create(**values)


def stall(job: SheetJob) -> None:
    """As if its run had written no progress for longer than STALL_AFTER."""
    long_ago = timezone.now() - sheets.STALL_AFTER - timedelta(seconds=5)
    SheetJob.objects.filter(pk=job.pk).update(updated_at=long_ago)


def assert_sheet_logs_in(pdf: bytes, accounts: list[MailAccount]) -> None:
    """Each code on the sheet holds the password its account has now."""
    codes = pdf_codes(pdf)
    assert [login_of(code)[0] for code in codes] == sorted(a.address for a in accounts)
    for account, code in zip(sorted(accounts, key=lambda a: a.address), codes, strict=True):
        account.refresh_from_db()
        assert passwords.verify_password(login_of(code)[1]["p"][0], account.password)


def test_build_resets_each_password_and_keeps_only_an_encrypted_pdf(
    accounts: list[MailAccount], admin_user: User, settings: Any
) -> None:
    job = sheets.start_sheet(account_ids=[a.pk for a in accounts], created_by=admin_user)
    built = sheets.build_sheet(job_id=job.pk)

    assert built is not None and built.state == SheetJob.State.DONE
    assert (built.done, built.failed, built.total) == (3, 0, 3)
    stored = bytes(SheetJob.objects.get(pk=job.pk).content or b"")
    pdf = sheets.take_sheet(job_id=job.pk, user=admin_user)
    assert pdf.startswith(b"%PDF") and not stored.startswith(b"%PDF")
    # Encrypted with the key derived from SECRET_KEY (as documented), not merely encoded.
    digest = hashlib.sha256(b"mailportal onboarding sheets\0" + settings.SECRET_KEY.encode())
    assert Fernet(base64.urlsafe_b64encode(digest.digest())).decrypt(stored) == pdf
    assert_sheet_logs_in(pdf, accounts)
    for account in accounts:
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

    stall(job)
    built = sheets.build_sheet(job_id=job.pk)
    assert built is not None and built.state == SheetJob.State.DONE and built.starts == 1


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


def test_purge_leaves_a_running_job_to_its_run(
    accounts: list[MailAccount], admin_user: User
) -> None:
    past = timezone.now() - timedelta(seconds=1)
    running = queued_job(accounts, admin_user, state=SheetJob.State.RUNNING, expires_at=past)
    failed = queued_job(accounts, admin_user, state=SheetJob.State.FAILED, expires_at=past)

    assert sheets.purge_sheets() == 1
    assert list(SheetJob.objects.values_list("pk", flat=True)) == [running.pk]
    assert not SheetJob.objects.filter(pk=failed.pk).exists()


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


def test_a_broker_that_cannot_be_reached_fails_the_job_and_changes_no_password(
    accounts: list[MailAccount], admin_user: User, broker_unreachable: Callable[..., Any]
) -> None:
    before = MailAccount.objects.get(pk=accounts[0].pk).password

    with broker_unreachable():
        job = sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)

    job.refresh_from_db()
    assert job.state == SheetJob.State.FAILED
    assert job.problems == sheets.NOT_STARTED
    assert MailAccount.objects.get(pk=accounts[0].pk).password == before


# ----- runs that overlap or fail mid-run -------------------------------------------------------


@contextmanager
def before_query(
    predicate: Callable[[str, int], bool], action: Callable[[], None]
) -> Iterator[list[str]]:
    """Run `action` once, just before the first UPDATE of this connection for which
    `predicate(sql, n)` holds (n: how many account password updates came before it).

    Django's execute_wrapper: the database sees the same statements it always does.
    """
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE"):
            updates = sum(s.startswith('UPDATE "accounts_mailaccount"') for s in seen)
            if "fired" not in seen and predicate(sql, updates):
                seen.append("fired")
                action()
            seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield seen


def _after_first_password(sql: str, passwords_updated: int) -> bool:
    """The first write of the run after its first account's new password: its next
    account's step (the job's heartbeat, or the password itself)."""
    return passwords_updated >= 1 and sql.startswith(
        ('UPDATE "accounts_sheetjob"', 'UPDATE "accounts_mailaccount"')
    )


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_job_was_taken_over_stops_and_the_sheet_has_the_live_passwords(
    accounts: list[MailAccount], admin_user: User
) -> None:
    from tests.conftest import need_service

    if connection.vendor != "postgresql":
        need_service("PostgreSQL", "two runs at once need two connections (DATABASE_URL)")
    job = queued_job(accounts, admin_user)
    second: list[SheetJob | None] = []

    def second_run() -> None:
        # Another worker takes the job for dead and runs it all, while the first is
        # between two accounts.
        def run() -> None:
            try:
                stall(job)
                second.append(sheets.build_sheet(job_id=job.pk))
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive()

    with before_query(_after_first_password, second_run):
        first = sheets.build_sheet(job_id=job.pk)

    assert first is None  # it noticed and stopped
    assert second and second[0] is not None and second[0].state == SheetJob.State.DONE
    assert second[0].starts == 2
    assert_sheet_logs_in(sheets.take_sheet(job_id=job.pk, user=admin_user), accounts)


def _second_password(sql: str, passwords_updated: int) -> bool:
    return passwords_updated >= 1 and sql.startswith('UPDATE "accounts_mailaccount"')


def _raise(error: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise error

    return action


@pytest.mark.django_db(transaction=True)
def test_a_database_error_mid_run_puts_the_job_back_for_the_retry(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = queued_job(accounts, admin_user)

    with (
        before_query(_second_password, _raise(OperationalError("connection lost"))),
        pytest.raises(OperationalError),
    ):
        sheets.build_sheet(job_id=job.pk, last_try=False)

    job.refresh_from_db()
    assert (job.state, job.attempt) == (SheetJob.State.QUEUED, None)
    retried = sheets.build_sheet(job_id=job.pk)  # what the task's retry does
    assert retried is not None and retried.state == SheetJob.State.DONE
    assert_sheet_logs_in(sheets.take_sheet(job_id=job.pk, user=admin_user), accounts)


@pytest.mark.django_db(transaction=True)
def test_a_database_error_on_the_last_try_fails_the_job(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = queued_job(accounts, admin_user)

    with before_query(_second_password, _raise(OperationalError("connection lost"))):
        failed = sheets.build_sheet(job_id=job.pk, last_try=True)

    assert failed is not None and failed.state == SheetJob.State.FAILED
    assert failed.problems.startswith("The database failed (OperationalError).")
    assert sheets.PASSWORDS_LOST in failed.problems


@pytest.mark.django_db(transaction=True)
def test_a_time_limit_mid_run_fails_the_job_with_a_message(
    accounts: list[MailAccount], admin_user: User
) -> None:
    job = queued_job(accounts, admin_user)

    with before_query(_second_password, _raise(SoftTimeLimitExceeded())):
        failed = sheets.build_sheet(job_id=job.pk)

    assert failed is not None and failed.state == SheetJob.State.FAILED
    assert "SoftTimeLimitExceeded" in failed.problems
    assert SheetJob.objects.get(pk=job.pk).content is None
    assert sheets.build_sheet(job_id=job.pk) is None  # failed stays failed


# ----- the sweep ---------------------------------------------------------------------------------


def test_the_sweep_restarts_a_job_whose_worker_was_lost(
    accounts: list[MailAccount],
    admin_user: User,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    lost = queued_job(accounts, admin_user, state=SheetJob.State.RUNNING, starts=1)
    busy = queued_job(accounts, admin_user, state=SheetJob.State.RUNNING, starts=1)
    stall(lost)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        report = sheets.sweep_sheets()

    assert (report.requeued, report.failed) == ([lost.pk], [])
    assert len(callbacks) == 1  # its task, sent after the commit (and run: eager)
    restarted = SheetJob.objects.get(pk=lost.pk)
    assert (restarted.state, restarted.starts) == (SheetJob.State.DONE, 2)
    assert SheetJob.objects.get(pk=busy.pk).state == SheetJob.State.RUNNING  # alive: left


def test_the_sweep_fails_a_job_whose_runs_keep_dying_and_one_past_its_hour(
    accounts: list[MailAccount], admin_user: User, django_capture_on_commit_callbacks: Any
) -> None:
    dying = queued_job(accounts, admin_user, state=SheetJob.State.RUNNING, starts=sheets.MAX_STARTS)
    stall(dying)
    late = queued_job(accounts, admin_user)
    SheetJob.objects.filter(pk=late.pk).update(expires_at=timezone.now() + timedelta(minutes=1))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        report = sheets.sweep_sheets(at=timezone.now() + timedelta(seconds=90))

    assert callbacks == []
    assert sorted(report.failed) == sorted([dying.pk, late.pk])
    dying.refresh_from_db()
    assert dying.state == SheetJob.State.FAILED
    assert f"stopped {sheets.MAX_STARTS} times" in dying.problems
    # Past its hour: failed (its run, if any, stops at its next account) and purged.
    assert report.purged == 1
    assert not SheetJob.objects.filter(pk=late.pk).exists()


# ----- keys --------------------------------------------------------------------------------------


def test_a_sheet_made_before_a_key_rotation_is_read_with_the_fallback_key(
    accounts: list[MailAccount], admin_user: User, settings: Any
) -> None:
    job = sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)
    sheets.build_sheet(job_id=job.pk)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40

    assert sheets.take_sheet(job_id=job.pk, user=admin_user).startswith(b"%PDF")


def test_a_sheet_no_key_can_read_is_refused_clearly(
    accounts: list[MailAccount], admin_user: User, settings: Any
) -> None:
    job = sheets.start_sheet(account_ids=[accounts[0].pk], created_by=admin_user)
    sheets.build_sheet(job_id=job.pk)
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40

    with pytest.raises(sheets.SheetUnreadable) as refused:
        sheets.take_sheet(job_id=job.pk, user=admin_user)

    assert refused.value.code == "sheet_unreadable"
    assert "build it again" in refused.value.message.lower()
    assert not SheetJob.objects.filter(pk=job.pk).exists()


def test_the_command_runs_the_sweep(
    accounts: list[MailAccount], admin_user: User, capsys: Any
) -> None:
    from django.core.management import call_command

    past = timezone.now() - timedelta(seconds=1)
    queued_job(accounts, admin_user, state=SheetJob.State.DONE, expires_at=past)

    call_command("sweep_sheets")

    assert capsys.readouterr().out.strip() == "0 queued again, 0 failed, 1 deleted"
    assert not SheetJob.objects.exists()


OAUTH_IMAP = {"type": "imap", "hostname": "oauth.example.org", "authentication": "OAuth2"}
PASSWORD_IMAP = {"type": "imap", "hostname": "imap.example.org"}
SMTP = {"type": "smtp", "hostname": "smtp.example.org", "port": 465}


def _sheet_of_anna(
    make_provider: Callable[..., Provider], user: User, servers: tuple[dict[str, Any], ...]
) -> tuple[MailAccount, SheetJob | None]:
    make_provider(servers=tuple({"port": 993, **server} for server in servers))
    account = create_account(
        domain="example.org", local_part="anna", password="Anna-first-pw-1", created_via="admin"
    )
    job = sheets.start_sheet(account_ids=[account.pk], created_by=user)
    return account, sheets.build_sheet(job_id=job.pk)


def test_codes_use_the_first_server_that_takes_a_password(
    make_provider: Callable[..., Provider], admin_user: User
) -> None:
    _, built = _sheet_of_anna(make_provider, admin_user, (OAUTH_IMAP, PASSWORD_IMAP, SMTP))
    assert built is not None

    [code] = pdf_codes(sheets.take_sheet(job_id=built.pk, user=admin_user))

    assert login_of(code)[1]["ih"] == ["imap.example.org"]


def test_a_provider_whose_servers_take_no_password_gets_no_code_and_keeps_the_password(
    make_provider: Callable[..., Provider], admin_user: User
) -> None:
    account, built = _sheet_of_anna(make_provider, admin_user, (OAUTH_IMAP, SMTP))

    assert built is not None and (built.done, built.failed) == (0, 1)
    assert "no IMAP server that takes a password" in built.problems
    account.refresh_from_db()
    assert passwords.verify_password("Anna-first-pw-1", account.password)
