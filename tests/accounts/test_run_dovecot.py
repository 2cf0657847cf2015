"""`manage.py run_dovecot`: a private Dovecot started, shown and stopped against the test DB."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.dovecot import LOOPBACK, PrivateDovecot
from accounts.services.accounts import create_account
from providers.models import Provider

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Under /tmp: run as root, the mail user must be able to enter it (see conftest).
    path = Path(tempfile.mkdtemp(prefix="mailportal-run-dovecot-"))
    yield path
    PrivateDovecot(state_dir=path, database=connection.settings_dict).stop()
    shutil.rmtree(path, ignore_errors=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command("run_dovecot", *args, stdout=out)
    return out.getvalue()


def test_run_dovecot_starts_against_the_database_then_stops(
    dovecot_installed: None,
    make_provider: Callable[..., Provider],
    state_dir: Path,
    free_port: int,
) -> None:
    make_provider()
    create_account(
        domain="example.org",
        local_part="romeo",
        password="Balcony-at-midnight-42",
        created_via="admin",
    )

    started = run("start", "--port", str(free_port), "--state-dir", str(state_dir))
    instance = PrivateDovecot(
        state_dir=state_dir, database=connection.settings_dict, port=free_port
    )
    logs_in = instance.auth_test("romeo@example.org", "Balcony-at-midnight-42")
    again = run("start", "--port", str(free_port), "--state-dir", str(state_dir))
    status = run("status", "--state-dir", str(state_dir))
    stopped = run("stop", "--state-dir", str(state_dir))

    assert f"on {LOOPBACK}:{free_port}" in started
    assert "user name = the full address" in started
    assert logs_in
    assert "already running" in again
    assert "Dovecot is running (pid " in status
    assert f"on {LOOPBACK}:{free_port}, 0 IMAP sessions" in status
    assert stopped.strip() == "Dovecot stopped."
    assert instance.pid() is None
    assert "is not running" in run("status", "--state-dir", str(state_dir))
    assert run("stop", "--state-dir", str(state_dir)).strip() == "Dovecot was not running."


def test_run_dovecot_start_fails_when_the_port_is_taken(
    dovecot_installed: None, state_dir: Path, free_port: int
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, free_port))
        taken.listen()
        with pytest.raises(CommandError, match="already in use"):
            run("start", "--port", str(free_port), "--state-dir", str(state_dir))
