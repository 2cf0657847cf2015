"""RELIABILITY.md check 5: kill -9 of the worker between the database and the mail server.

The portal runs under gunicorn in its own processes with the `command` backend; the mail
server's program (tests/accounts/mailbox_server.py) pauses once inside a create, before or
after making the mailbox, and the test kills the gunicorn worker serving the registration
there. The reconciler must then leave no orphan row and no orphan mailbox, and the same
registration must succeed once when retried.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import MailAccount, MailboxState
from accounts.services.reconcile import reconcile_mailboxes
from providers.models import Provider
from tests.accounts.conftest import MailServer
from tests.conftest import PortalServer

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "Balcony-at-midnight-42"


def register(server: PortalServer, message_id: str) -> tuple[int | None, dict[str, Any] | None]:
    """POST a registration; (status, body), or (None, None) if the connection died."""
    body = {
        "id": message_id,
        "type": "urn:cadmium:profile:register",
        "to": ["example.org"],
        "payload": {"username": "juliet", "password": PASSWORD},
    }
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(
            "POST",
            "/api/v1/register",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Host": "127.0.0.1"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    except (ConnectionError, http.client.HTTPException):
        return None, None
    finally:
        connection.close()


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (the worker and the program it runs)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    os.kill(pid, signal.SIGKILL)
    for child in children:
        kill_tree(int(child)) if Path(f"/proc/{child}").exists() else None


@pytest.mark.parametrize(
    ("pause", "mailbox_made"),
    [("before-create", False), ("after-create", True)],
    ids=["after-commit-before-mailbox", "after-mailbox-before-commit"],
)
def test_a_worker_killed_mid_registration_leaves_nothing_the_reconciler_cannot_settle(
    make_provider: Callable[..., Provider],
    mail_server: MailServer,
    portal_server: Callable[..., PortalServer],
    settings: Any,
    tmp_path: Path,
    pause: str,
    mailbox_made: bool,
) -> None:
    make_provider()
    marker = tmp_path / "paused"
    server = portal_server(
        MAILBOX_BACKEND="command",
        MAILBOX_COMMAND=mail_server.command(pause=pause, marker=marker),
    )
    answers: list[tuple[int | None, Any]] = []
    request = threading.Thread(target=lambda: answers.append(register(server, "first")))
    request.start()
    wait_for(marker)
    (worker,) = server.worker_pids()

    kill_tree(worker)
    request.join(timeout=30)

    assert answers == [(None, None)]  # no acknowledgement was given
    (row,) = MailAccount.objects.all()
    assert row.mailbox_state == MailboxState.CREATING
    assert ("juliet@example.org" in mail_server.mailboxes()) is mailbox_made

    # The recovery window passes (the grace period is shortened, not waited for).
    MailAccount.objects.update(updated_at=timezone.now() - timedelta(hours=1))
    report = reconcile_mailboxes()

    assert report.rolled_back == ["juliet@example.org"]
    assert report.orphan_mailboxes == report.missing_mailboxes == []
    assert report.clean
    assert not MailAccount.objects.exists()
    assert mail_server.mailboxes() == {}

    # gunicorn replaced the worker; the client's retry now succeeds, exactly once.
    status, answer = register(server, "second")
    assert status == 201, answer
    assert MailAccount.objects.get().mailbox_state == MailboxState.READY
    assert list(mail_server.mailboxes()) == ["juliet@example.org"]
    assert reconcile_mailboxes().clean
