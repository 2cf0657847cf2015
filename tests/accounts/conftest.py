"""Fixtures of the accounts tests: a mail server user store run by the `command` backend, and
the personas of self-service (the owner, a stranger)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import pytest
from django.core import mail
from django.views.debug import get_exception_reporter_class

from accounts.models import MailAccount
from accounts.services.accounts import create_account
from providers.models import Provider
from tests.accounts import self_service

SERVER = Path(__file__).with_name("mailbox_server.py")


@dataclass
class MailServer:
    """tests/accounts/mailbox_server.py with its state in `state` (see its docstring)."""

    state: Path

    def command(self, *, pause: str | None = None, marker: Path | None = None) -> str:
        argv = [sys.executable, str(SERVER), str(self.state)]
        if pause is not None:
            argv += ["--pause", pause, "--marker", str(marker)]
        return shlex.join(argv)

    def mailboxes(self) -> dict[str, Any]:
        if not self.state.exists():
            return {}
        boxes: dict[str, Any] = json.loads(self.state.read_text(encoding="utf-8"))
        return boxes

    def effects(self) -> list[str]:
        """Every change made, as "<action> <address>", in order."""
        log = self.state.with_suffix(".log")
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []

    def add(self, address: str, *, enabled: bool = True) -> None:
        """A mailbox made on the mail server by someone else (not through the portal)."""
        boxes = self.mailboxes()
        boxes[address] = {"hash": "{ARGON2ID}elsewhere", "enabled": enabled, "limit": 0}
        self.state.write_text(json.dumps(boxes), encoding="utf-8")

    def lose(self, address: str) -> None:
        """The mail server no longer has the mailbox: it refuses every change to it."""
        boxes = self.mailboxes()
        del boxes[address]
        self.state.write_text(json.dumps(boxes), encoding="utf-8")

    def store(self, address: str, used_bytes: int) -> None:
        """Mail arrived: the mailbox now uses `used_bytes`."""
        boxes = self.mailboxes()
        boxes[address]["used"] = used_bytes
        self.state.write_text(json.dumps(boxes), encoding="utf-8")


@pytest.fixture
def mail_server(settings: Any, tmp_path: Path) -> MailServer:
    """MAILBOX_BACKEND=command, run against a fresh mailbox_server.py store."""
    server = MailServer(state=tmp_path / "mailboxes.json")
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = server.command()
    return server


@pytest.fixture
def owner(make_provider: Callable[..., Provider]) -> MailAccount:
    """juliet@example.org, active and ready, password self_service.PASSWORD."""
    make_provider()
    return create_account(
        domain="example.org",
        local_part="juliet",
        password=self_service.PASSWORD,
        created_via="admin",
        full_name="Juliet Capulet",
    )


@pytest.fixture
def stranger(owner: MailAccount) -> MailAccount:
    """romeo@example.org, another account of the same provider, same password."""
    return create_account(
        domain="example.org",
        local_part="romeo",
        password=self_service.PASSWORD,
        created_via="admin",
    )


@pytest.fixture
def no_rate_limit(settings: Any) -> None:
    """Rate limits off: the suite's logins all come from 127.0.0.1, and Redis keeps counts
    between tests. The tests of the limits switch them on with addresses of their own."""
    settings.RATELIMIT_ENABLE = False


@pytest.fixture
def broker_unreachable(
    settings: Any,
    free_port: int,
    redis_client: Any,  # celery_through resets the app's Redis result backend too
    django_capture_on_commit_callbacks: Any,
) -> Callable[[], AbstractContextManager[Any]]:
    """`with broker_unreachable():` tasks are sent (not run eagerly) to a closed port, and
    on-commit callbacks run, as after a real commit."""
    from tests.providers.services.test_fanout import celery_through

    @contextmanager
    def unreachable() -> Iterator[Any]:
        settings.CELERY_TASK_ALWAYS_EAGER = False
        with (
            celery_through(broker=f"redis://127.0.0.1:{free_port}/0"),
            django_capture_on_commit_callbacks(execute=True) as callbacks,
        ):
            yield callbacks

    return unreachable


class _ReportCatcher(logging.Handler):
    """Django's error report of each failed request, built as Django builds it: the text an
    error mail carries and the HTML page (with every frame's local variables)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        request = getattr(record, "request", None)
        if record.exc_info is None or request is None:
            return
        reporter = get_exception_reporter_class(request)(request, *record.exc_info, is_email=True)
        self.reports += [reporter.get_traceback_text(), reporter.get_traceback_html()]


@pytest.fixture
def error_reports(settings: Any) -> Iterator[Callable[[], str]]:
    """`error_reports()`: every error report so far (HTML and text, and the mails to ADMINS)
    in one text, as production (DEBUG off) writes them."""
    settings.DEBUG = False
    settings.ADMINS = [("Operator", "operator@example.org")]
    catcher = _ReportCatcher()
    logger = logging.getLogger("django.request")
    logger.addHandler(catcher)
    try:
        yield lambda: "\n".join([*catcher.reports, *(m.body for m in mail.outbox)])
    finally:
        logger.removeHandler(catcher)


@pytest.fixture
def hasher_breaks(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """`hasher_breaks()`: from then on argon2 fails unexpectedly once it holds a password
    (a 500 whose frames hold the password). argon2-cffi is a third party: the fault is
    injected where our code hands it the password."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the hasher is out of order")

    def breaks() -> None:
        monkeypatch.setattr(argon2.PasswordHasher, "verify", broken)
        monkeypatch.setattr(argon2.low_level, "hash_secret", broken)

    return breaks
