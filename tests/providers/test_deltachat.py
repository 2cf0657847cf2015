"""Delta Chat's own core reads our codes: `deltachat-rpc-server` (PyPI) and its check_qr.

The RPC server is the chatmail core built for Python's wheels; its `check_qr` is the parser
the apps run on a scanned code, and `set_config_from_qr` then configures the account: with a
DCLOGIN code pointing at the real Dovecot and a real SMTP server, the core logs in with
exactly the settings and the password the code carries.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from accounts.dovecot import LOOPBACK
from accounts.services.accounts import create_account
from accounts.services.sheets import login_text
from providers.models import Provider
from providers.services import onboarding
from tests.conftest import need_service

pytestmark = pytest.mark.services

# Every character DCLOGIN must carry through form decoding (specs/qr.md), and more.
HOSTILE_PASSWORD = "Ab+1 &%#x=y?z/ü€-long-enough"


@pytest.fixture(scope="module")
def rpc() -> Iterator[Any]:
    """A deltachat-rpc-server process with a scratch accounts folder."""
    server = Path(sys.executable).with_name("deltachat-rpc-server")
    if not server.exists():
        found = shutil.which("deltachat-rpc-server")
        if found is None:
            need_service("deltachat-rpc-server", "not installed (pip install deltachat-rpc-server)")
        server = Path(str(found))
    from deltachat_rpc_client.rpc import Rpc

    folder = tempfile.mkdtemp(prefix="mailportal-deltachat-")
    with Rpc(accounts_dir=folder, rpc_server_path=str(server)) as client:
        yield client
    # The client closes the server's stdin and lets it exit; reap it and its pipes here, or
    # Python warns about a running child and open files (warnings are errors in this suite).
    client.process.wait(timeout=30)
    for pipe in (client.process.stdout, client.process.stderr):
        if pipe is not None:
            pipe.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def account_id(rpc: Any) -> Iterator[int]:
    number: int = rpc.add_account()
    yield number
    rpc.remove_account(number)


def test_check_qr_reads_a_dcaccount_code_as_an_account_code(
    rpc: Any, account_id: int, make_token: Callable[..., Any], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"
    issued = make_token()

    result = rpc.check_qr(account_id, issued.dcaccount_text())

    assert result == {"kind": "account", "domain": "portal.example.org"}


@pytest.mark.django_db
def test_check_qr_reads_a_dclogin_code_with_its_address(
    rpc: Any, account_id: int, make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    account = create_account(
        domain="example.org", local_part="ann", password=HOSTILE_PASSWORD, created_via="admin"
    )

    result = rpc.check_qr(account_id, login_text(account, HOSTILE_PASSWORD))

    assert result == {"kind": "login", "address": "ann@example.org"}


class _Submission:
    """aiosmtpd handler and authenticator: records each AUTH, accepts the right password."""

    def __init__(self, address: str, password: str) -> None:
        self.address, self.password = address, password
        self.logins: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = (data.login.decode(), data.password.decode())
        with self.lock:
            self.logins.append(login)
        return AuthResult(success=login == (self.address, self.password))


@pytest.fixture
def submission(free_port: int) -> Iterator[Callable[[str, str], tuple[_Submission, int]]]:
    """A real SMTP server with AUTH over plain TCP (tests only), on a free port."""
    controllers: list[Controller] = []
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    def start(address: str, password: str) -> tuple[_Submission, int]:
        handler = _Submission(address, password)
        controller = Controller(
            object(),
            hostname=LOOPBACK,
            port=free_port,
            authenticator=handler,
            auth_require_tls=False,
        )
        controller.start()
        controllers.append(controller)
        return handler, free_port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.mark.django_db(transaction=True)
def test_delta_chat_logs_in_with_the_dclogin_settings_of_a_non_standard_provider(
    rpc: Any,
    account_id: int,
    dovecot: Any,
    submission: Callable[[str, str], tuple[_Submission, int]],
    make_provider: Callable[..., Provider],
) -> None:
    smtp, smtp_port = submission("ann@example.org", HOSTILE_PASSWORD)
    provider = make_provider(
        servers=(
            {"type": "imap", "hostname": "imap.example.org", "port": dovecot.port},
            {"type": "smtp", "hostname": "smtp.example.org", "port": smtp_port},
        )
    )
    provider.servers.update(socket_type="plain")  # our test servers speak no TLS
    account = create_account(
        domain="example.org", local_part="ann", password=HOSTILE_PASSWORD, created_via="admin"
    )
    text = login_text(account, HOSTILE_PASSWORD)
    # The admin wants dotted host names, which name no machine here: the code's hosts are
    # pointed at the loopback, everything else is as the provider's settings wrote it.
    assert text.count(".example.org&") == 2
    text = text.replace("imap.example.org&", f"{LOOPBACK}&").replace(
        "smtp.example.org&", f"{LOOPBACK}&"
    )

    _wait_for_dovecot(dovecot, account.address)
    rpc.set_config_from_qr(account_id, text)  # configures: logs in over IMAP and SMTP

    assert rpc.is_configured(account_id)
    transports = rpc.list_transports(account_id)
    assert len(transports) == 1
    settings_read = transports[0]
    assert settings_read["addr"] == "ann@example.org"
    assert settings_read["imapServer"] == LOOPBACK
    assert settings_read["imapPort"] == dovecot.port
    assert settings_read["imapSecurity"] == "plain"
    assert settings_read["smtpServer"] == LOOPBACK
    assert settings_read["smtpPort"] == smtp_port
    assert settings_read["smtpSecurity"] == "plain"
    assert settings_read["password"] == HOSTILE_PASSWORD
    assert ("ann@example.org", HOSTILE_PASSWORD) in smtp.logins


def _wait_for_dovecot(dovecot: Any, address: str) -> None:
    """Until Dovecot's passdb answers for `address` (a wrong password: refused, not failed).

    On SQLite, Dovecot's connection answers "temporary failure" once after another test
    re-created the dovecot_users view (tests/portal/test_dbviews.py) and then reconnects;
    this test is about Delta Chat, so it starts once Dovecot reads the database again.
    """
    for _ in range(5):
        result = dovecot.doveadm("auth", "test", address, "not-the-password", check=False)
        if (
            "auth failed" in (result.stdout + result.stderr).lower()
            and "temporary" not in (result.stdout + result.stderr).lower()
        ):
            return
        time.sleep(0.5)
    pytest.fail(f"Dovecot did not answer for {address}: {dovecot.log_tail()}")


def test_onboarding_created_via_matches_the_accounts_choice() -> None:
    from accounts.models import CreatedVia

    assert onboarding.CREATED_VIA == CreatedVia.QR_TOKEN
