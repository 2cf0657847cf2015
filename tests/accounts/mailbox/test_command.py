"""The `command` mailbox backend against a real program (a script written by the test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from accounts.mailbox import MailboxError
from accounts.models import MailAccount, MailboxState
from accounts.services.accounts import create_account, delete_account, set_password

SCRIPT = """
import json, sys
request = json.load(sys.stdin)
with open({log!r}, "a") as log:
    log.write(json.dumps(request) + "\\n")
if request["address"].startswith({fail_prefix!r}):
    sys.stderr.write("quota service says no to " + request.get("password", "") + "\\n")
    sys.exit(3)
"""


@pytest.fixture
def command(settings: Any, tmp_path: Path) -> Path:
    log = tmp_path / "requests.jsonl"
    script = tmp_path / "mailbox.py"
    script.write_text(SCRIPT.format(log=str(log), fail_prefix="refused"))
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = f"{sys.executable} {script}"
    return log


def requests_in(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_command_receives_create_with_hash_and_password(command: Path, make_provider: Any) -> None:
    make_provider(domains=("example.org",))

    account = create_account(
        domain="example.org",
        local_part="juliet",
        password="balcony-at-midnight",
        created_via="api",
        full_name="Juliet",
    )

    (request,) = requests_in(command)
    assert request["action"] == "create"
    assert request["address"] == account.address
    assert request["password"] == "balcony-at-midnight"
    assert request["passwordHash"].startswith("{ARGON2ID}$argon2id$")
    assert (request["quotaMB"], request["fullName"]) == (1024, "Juliet")


def test_command_failure_rolls_back_and_hides_the_password(
    command: Path, make_provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    make_provider(domains=("example.org",))

    with pytest.raises(MailboxError) as error:
        create_account(
            domain="example.org",
            local_part="refused-one",
            password="balcony-at-midnight",
            created_via="api",
        )

    assert not MailAccount.objects.exists()
    assert "quota service says no" in error.value.message
    assert "balcony-at-midnight" not in error.value.message
    assert "balcony-at-midnight" not in caplog.text


def test_command_gets_set_password_and_delete(command: Path, make_provider: Any) -> None:
    make_provider(domains=("example.org",))
    account = create_account(
        domain="example.org", local_part="juliet", password="balcony-at-midnight", created_via="api"
    )

    set_password(account=account, password="a-new-long-secret-9")
    delete_account(account=account)

    actions = [(r["action"], r.get("password")) for r in requests_in(command)]
    assert actions == [
        ("create", "balcony-at-midnight"),
        ("set-password", "a-new-long-secret-9"),
        ("delete", None),
    ]


def test_command_timeout_leaves_the_row_creating_for_the_reconciler(
    settings: Any, tmp_path: Path, make_provider: Any
) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time; time.sleep(5)\n")
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = f"{sys.executable} {script}"
    settings.MAILBOX_COMMAND_TIMEOUT = 1
    make_provider(domains=("example.org",))

    with pytest.raises(MailboxError) as error:
        create_account(
            domain="example.org",
            local_part="juliet",
            password="balcony-at-midnight",
            created_via="api",
        )

    # The program may still have made the mailbox: the row stays, marked, and cannot log in.
    assert error.value.outcome_unknown
    (row,) = MailAccount.objects.all()
    assert row.mailbox_state == MailboxState.CREATING
    assert not MailAccount.objects.active().exists()
