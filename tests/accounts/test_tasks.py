"""accounts.tasks: each loads and calls its service; the sheet task retries database errors.

Below, accounts.tasks under a real Celery worker: RELIABILITY.md check 7, the worker-kill half.

A reconciliation pass that re-creates a lost mailbox is killed (kill -9 of the worker) right
after the mail server made the mailbox and before the task was acknowledged. With late
acknowledgement Redis hands the task to the next worker once the (test-sized) visibility
timeout has passed; the pass runs again and the mailbox exists exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection

from accounts.models import CreatedVia
from accounts.services.accounts import create_account
from accounts.services.reconcile import reconcile_mailboxes
from accounts.tasks import reconcile_mailboxes as reconcile_task
from providers.models import Provider
from tests.accounts.conftest import MailServer
from tests.conftest import database_url

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

VISIBILITY_SECONDS = 2


@contextmanager
def celery_worker(queue: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process (solo pool: the task runs in the process we kill) on `queue`."""
    command = [
        sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", queue, "-P", "solo",
        "-n", f"{queue}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
        "--without-heartbeat", "-l", "INFO",
    ]  # fmt: skip
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=django_settings.BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_reconcile_pass_killed_mid_task_is_redelivered_and_makes_the_mailbox_once(
    make_provider: Callable[..., Provider],
    mail_server: MailServer,
    redis_client: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    make_provider()
    create_account(
        domain="example.org", local_part="juliet", password="Balcony-at-midnight-42",
        created_via=CreatedVia.API,
    )  # fmt: skip
    mail_server.state.write_text("{}", encoding="utf-8")  # the mail server was restored: lost
    marker = tmp_path / "paused"
    queue = f"reconcile-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(dict(connection.settings_dict)),
        "REDIS_URL": django_settings.REDIS_URL,
        "MAILBOX_BACKEND": "command",
        "MAILBOX_COMMAND": mail_server.command(pause="after-create", marker=marker),
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_SECONDS),
    }
    log = tmp_path / "worker.log"
    settings.CELERY_TASK_ALWAYS_EAGER = False

    result = reconcile_task.apply_async(kwargs={"recreate_missing": True}, queue=queue)
    with celery_worker(queue, env, log) as first:
        wait_for(marker.exists, 60, f"the first worker never ran the task: {log.read_text()}")
        assert "juliet@example.org" in mail_server.mailboxes()
        os.killpg(first.pid, signal.SIGKILL)  # the worker and the paused mail-server program
        first.wait(timeout=10)
    assert not result.ready()

    time.sleep(VISIBILITY_SECONDS + 0.5)  # the task is now overdue for redelivery
    with celery_worker(queue, env, log):
        outcome = result.get(timeout=60)

    # The second run found the mailbox the first had made: nothing missing, nothing made.
    assert outcome["missing_mailboxes"] == 0
    assert outcome["fixed"] == 0
    assert list(mail_server.mailboxes()) == ["juliet@example.org"]
    assert mail_server.effects() == ["create juliet@example.org", "create juliet@example.org"]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert reconcile_mailboxes().clean


def test_the_beat_schedule_runs_the_reconcile_task_every_five_minutes() -> None:
    entry = django_settings.CELERY_BEAT_SCHEDULE["reconcile-mailboxes"]
    assert (entry["task"], entry["schedule"]) == (reconcile_task.name, 300.0)


# ----- onboarding sheets -------------------------------------------------------------------------


@pytest.fixture
def sheet_job(make_provider: Callable[..., Provider], admin_user: Any) -> Any:
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import SheetJob

    make_provider()
    account = create_account(
        domain="example.org", local_part="romeo", password="Wherefore-art-thou-1",
        created_via=CreatedVia.ADMIN,
    )  # fmt: skip
    return SheetJob.objects.create(
        created_by=admin_user,
        account_ids=[account.pk],
        total=1,
        expires_at=timezone.now() + timedelta(hours=1),
    )


def test_build_sheet_task_builds_the_sheet_in_eager_mode(sheet_job: Any, settings: Any) -> None:
    from accounts import tasks

    settings.CELERY_TASK_ALWAYS_EAGER = True

    assert tasks.build_sheet.delay(sheet_job.pk).get() == "done"
    sheet_job.refresh_from_db()
    assert sheet_job.content is not None


def test_build_sheet_task_retries_when_the_database_does_not_answer(
    sheet_job: Any, database_down: Callable[[], None]
) -> None:
    from celery.exceptions import Retry

    from accounts import tasks
    from accounts.models import SheetJob

    saved = dict(connection.settings_dict)
    database_down()
    with pytest.raises(Retry) as caught:
        tasks.build_sheet.apply(args=[sheet_job.pk], throw=True).get()

    assert caught.value.when == 30  # the first of 30, 60, 120 s
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)
    assert SheetJob.objects.get(pk=sheet_job.pk).state == SheetJob.State.QUEUED


def test_build_sheet_task_gives_up_after_its_last_retry(
    sheet_job: Any, database_down: Callable[[], None]
) -> None:
    from django.db import OperationalError

    from accounts import tasks

    database_down()
    with pytest.raises(OperationalError):
        tasks.build_sheet.apply(args=[sheet_job.pk], throw=True, retries=3).get()


def test_sweep_sheets_task_runs_the_sweep(sheet_job: Any, settings: Any) -> None:
    from accounts import tasks

    settings.CELERY_TASK_ALWAYS_EAGER = True

    assert tasks.sweep_sheets.delay().get() == {"requeued": 0, "failed": 0, "purged": 0}


def test_the_beat_schedule_sweeps_sheets_every_minute() -> None:
    from accounts import tasks

    entry = django_settings.CELERY_BEAT_SCHEDULE["sweep-sheets"]
    assert (entry["task"], entry["schedule"]) == (tasks.sweep_sheets.name, 60.0)
