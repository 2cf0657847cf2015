"""accounts.services.reconcile: settling interrupted changes, comparing with the mail server.

RELIABILITY.md invariant 2 (no orphan rows, no orphan mailboxes) and check 5's recovery half;
the crashes themselves are injected in tests/accounts/test_crash_recovery.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import AccountStatus, CreatedVia, MailAccount, MailboxState
from accounts.services.accounts import AddressTaken, create_account
from accounts.services.reconcile import reconcile_mailboxes
from accounts.tasks import reconcile_mailboxes as reconcile_task
from providers.models import Provider
from tests.accounts.conftest import MailServer

PASSWORD = "a-long-enough-passphrase-93"


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def create(local_part: str = "juliet", **overrides: Any) -> MailAccount:
    return create_account(
        domain="example.org",
        local_part=local_part,
        password=PASSWORD,
        created_via=CreatedVia.API,
        **overrides,
    )


def interrupt(account: MailAccount, state: MailboxState, *, ago: timedelta) -> None:
    """Leave `account` as a crash would have: in `state`, last touched `ago`."""
    MailAccount.objects.filter(pk=account.pk).update(
        mailbox_state=state, updated_at=timezone.now() - ago
    )


LONG_AGO = timedelta(hours=1)


def test_reconcile_rolls_back_an_interrupted_creation_and_its_mailbox(
    provider: Provider, mail_server: MailServer
) -> None:
    account = create()
    interrupt(account, MailboxState.CREATING, ago=LONG_AGO)

    report = reconcile_mailboxes()

    assert report.rolled_back == ["juliet@example.org"]
    assert not MailAccount.objects.exists()
    assert mail_server.mailboxes() == {}
    assert report.clean


def test_reconcile_rolls_back_an_interrupted_creation_that_made_no_mailbox(
    provider: Provider, mail_server: MailServer
) -> None:
    account = create()
    interrupt(account, MailboxState.CREATING, ago=LONG_AGO)
    mail_server.state.write_text("{}", encoding="utf-8")  # the crash came before the create

    report = reconcile_mailboxes()

    assert report.rolled_back == ["juliet@example.org"]
    assert not MailAccount.objects.exists()
    assert report.clean


def test_reconcile_leaves_a_creation_within_the_grace_period_alone(
    provider: Provider, mail_server: MailServer
) -> None:
    account = create()
    interrupt(account, MailboxState.CREATING, ago=timedelta(seconds=5))

    report = reconcile_mailboxes()

    assert report.rolled_back == []
    assert MailAccount.objects.get().mailbox_state == MailboxState.CREATING
    assert "juliet@example.org" in mail_server.mailboxes()
    assert report.orphan_mailboxes == []  # its row exists: under way, not an orphan


def test_reconcile_finishes_an_interrupted_deletion(
    provider: Provider, mail_server: MailServer
) -> None:
    account = create()
    interrupt(account, MailboxState.DELETING, ago=LONG_AGO)

    report = reconcile_mailboxes()

    assert report.deletions_finished == ["juliet@example.org"]
    assert not MailAccount.objects.exists()
    assert mail_server.mailboxes() == {}
    assert mail_server.effects() == ["create juliet@example.org", "delete juliet@example.org"]


def test_reconcile_reports_an_orphan_mailbox_and_deletes_it_only_when_asked(
    provider: Provider, mail_server: MailServer
) -> None:
    mail_server.add("stray@example.org")
    mail_server.add("someone@elsewhere.example")  # not a hosted domain: not ours to judge

    report = reconcile_mailboxes()
    assert report.orphan_mailboxes == ["stray@example.org"]
    assert not report.clean
    assert "stray@example.org" in mail_server.mailboxes()

    report = reconcile_mailboxes(delete_orphans=True)
    assert report.fixed == ["stray@example.org"]
    assert set(mail_server.mailboxes()) == {"someone@elsewhere.example"}
    assert reconcile_mailboxes().clean


def test_reconcile_recreates_a_missing_mailbox_once_when_asked(
    provider: Provider, mail_server: MailServer
) -> None:
    account = create()
    mail_server.state.write_text("{}", encoding="utf-8")  # the mail server lost it

    report = reconcile_mailboxes()
    assert report.missing_mailboxes == ["juliet@example.org"]
    assert mail_server.mailboxes() == {}

    reconcile_mailboxes(recreate_missing=True)
    reconcile_mailboxes(recreate_missing=True)  # idempotent: found, not made again

    box = mail_server.mailboxes()["juliet@example.org"]
    assert box["hash"] == "{ARGON2ID}" + account.password.removeprefix("argon2")
    assert mail_server.effects().count("create juliet@example.org") == 2  # first + re-create
    assert reconcile_mailboxes().clean


def test_reconcile_aligns_a_mailbox_enabled_unlike_its_account(
    provider: Provider, mail_server: MailServer
) -> None:
    create()
    MailAccount.objects.update(status=AccountStatus.DISABLED)  # the disable never arrived

    report = reconcile_mailboxes()

    assert report.status_drift == ["juliet@example.org"]
    assert report.fixed == ["juliet@example.org"]
    assert mail_server.mailboxes()["juliet@example.org"]["enabled"] is False
    assert reconcile_mailboxes().status_drift == []


def test_reconcile_reports_but_still_settles_when_the_list_fails(
    provider: Provider, mail_server: MailServer, settings: Any, tmp_path: Any
) -> None:
    account = create()
    interrupt(account, MailboxState.DELETING, ago=LONG_AGO)
    script = tmp_path / "no-list.py"
    script.write_text(
        "import json, sys\n"
        "if json.load(sys.stdin)['action'] == 'list':\n"
        "    sys.exit('list is not supported')\n"
    )
    settings.MAILBOX_COMMAND = f"python3 {script}"

    report = reconcile_mailboxes()

    assert report.deletions_finished == ["juliet@example.org"]
    assert not report.inventory_checked
    assert report.errors == ["inventory: The mail server refused: list is not supported"]
    assert not report.clean


def test_reconcile_on_the_sql_backend_compares_with_the_dovecot_view(
    provider: Provider,
) -> None:
    create("juliet")
    create("romeo")
    # A hash Dovecot cannot verify keeps an account out of the view: reported as missing.
    MailAccount.objects.filter(local_part="romeo").update(password="md5$salt$abc")
    create("tybalt")
    MailAccount.objects.filter(local_part="tybalt").update(status=AccountStatus.DISABLED)

    report = reconcile_mailboxes()

    assert report.inventory_checked
    assert report.missing_mailboxes == ["romeo@example.org"]  # tybalt: disabled, rightly absent
    assert report.orphan_mailboxes == []


def test_a_new_creation_settles_an_interrupted_one_of_the_same_address(
    provider: Provider, mail_server: MailServer
) -> None:
    interrupt(create(), MailboxState.CREATING, ago=LONG_AGO)

    account = create()  # the client's retry after the crash

    assert account.mailbox_state == MailboxState.READY
    assert MailAccount.objects.count() == 1
    assert mail_server.effects() == [
        "create juliet@example.org",
        "delete juliet@example.org",
        "create juliet@example.org",
    ]


def test_a_creation_under_way_still_holds_its_address(
    provider: Provider, mail_server: MailServer
) -> None:
    interrupt(create(), MailboxState.CREATING, ago=timedelta(seconds=5))
    with pytest.raises(AddressTaken):
        create()


def test_reconcile_command_exits_non_zero_while_anything_disagrees(
    provider: Provider, mail_server: MailServer, capsys: pytest.CaptureFixture[str]
) -> None:
    create()
    mail_server.add("stray@example.org")

    with pytest.raises(CommandError):
        call_command("reconcile_mailboxes")
    assert "orphan mailbox: stray@example.org" in capsys.readouterr().out

    call_command("reconcile_mailboxes", "--delete-orphans")
    call_command("reconcile_mailboxes")  # clean now: no error
    assert "0 orphan mailboxes" in capsys.readouterr().out


def test_reconcile_task_calls_the_service(provider: Provider, mail_server: MailServer) -> None:
    interrupt(create(), MailboxState.CREATING, ago=LONG_AGO)

    result = reconcile_task.apply().get()

    assert result["rolled_back"] == 1
    assert not MailAccount.objects.exists()
