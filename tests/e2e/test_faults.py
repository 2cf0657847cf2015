"""Network faults between the portal and its services, injected by tests/fakes/tcp_proxy.py.

The fault proxy sits in front of PostgreSQL (the live portal under gunicorn reaches its
database only through it), Redis (cache and rate limits) and Dovecot's doveadm API; the
remote providers' side is tests/providers/services/test_fanout_faults.py. Each fault
(drop, stall, reset, delay) must give a clear answer within the documented timeout (503
with Retry-After, never a 500 or a hang) and leave nothing lost or duplicated: once the
path heals, the same request succeeds exactly once. RELIABILITY.md checks 6 and 7,
invariants 1 and 3.

Timeouts these tests hold the portal to (portal/settings.py): PostgreSQL connect_timeout
5 s; Redis socket_connect_timeout and socket_timeout 2 s, one retry of a lost connection;
doveadm 5 s (accounts/mailbox/doveadm.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from accounts import cpe3
from accounts.models import AccountSession, MailAccount
from accounts.passwords import verify_password
from accounts.services.accounts import account_summary, change_password, create_account
from accounts.services.sessions import ClientInfo, open_session
from providers.models import Provider
from tests.conftest import PortalServer, database_url, http_post_json, need_service
from tests.fakes.tcp_proxy import FaultProxy

pytestmark = [pytest.mark.services]

PASSWORD = "Balcony-at-midnight-42"
PG_CONNECT_TIMEOUT = 5.0
REDIS_TIMEOUT = 2.0
DOVEADM_TIMEOUT = 5.0
MARGIN = 3.0  # process start-up of a request, a loaded 2-core machine


@pytest.fixture
def proxy_to() -> Iterator[Callable[[int], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def start(port: int) -> FaultProxy:
        proxy = FaultProxy(port)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


def registration(username: str) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(8),
        "type": cpe3.REGISTER,
        "to": ["example.org"],
        "payload": {"username": username, "password": PASSWORD},
    }


# ----- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def postgres_through(
    transactional_db: None, proxy_to: Callable[[int], FaultProxy]
) -> tuple[FaultProxy, str]:
    """A fault proxy in front of the test database's PostgreSQL, and a DATABASE_URL via it."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's own connection behaviour (SQLite has no network path)")
    database = dict(connection.settings_dict)
    proxy = proxy_to(int(database["PORT"] or 5432))
    return proxy, database_url({**database, "HOST": "127.0.0.1", "PORT": str(proxy.port)})


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["drop", "stall", "reset"])
def test_registration_answers_503_while_postgres_is_cut_off_and_succeeds_once_after(
    portal_server: Callable[..., PortalServer],
    make_provider: Callable[..., Provider],
    postgres_through: tuple[FaultProxy, str],
    fault: str,
) -> None:
    make_provider()
    proxy, through = postgres_through
    server = portal_server(DATABASE_URL=through, PORTAL_TRUSTED_PROXIES="127.0.0.1/32")
    url = f"{server.url}/api/v1/register"

    def register(body: dict[str, Any], client: str) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        status, answer = http_post_json(url, body, {"X-Forwarded-For": client})
        return status, answer, time.monotonic() - started

    warm, _, _ = register(registration("warmup"), "198.18.0.1")
    assert warm == HTTPStatus.CREATED  # the portal holds a live connection now
    getattr(proxy, fault)()
    proxy.cut()  # the held connection goes too: the next request must connect anew

    body = registration("romeo")
    status, answer, seconds = register(body, "198.18.0.2")

    assert status == HTTPStatus.SERVICE_UNAVAILABLE, answer
    assert seconds < PG_CONNECT_TIMEOUT + MARGIN, seconds
    assert not MailAccount.objects.filter(local_part="romeo").exists()
    proxy.heal()
    status, answer, _ = register(body, "198.18.0.3")  # the client's retry, once healed
    assert status == HTTPStatus.CREATED, answer
    assert MailAccount.objects.filter(local_part="romeo").count() == 1
    assert MailAccount.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_registration_through_a_slow_postgres_path_succeeds_once(
    portal_server: Callable[..., PortalServer],
    make_provider: Callable[..., Provider],
    postgres_through: tuple[FaultProxy, str],
) -> None:
    make_provider()
    proxy, through = postgres_through
    proxy.delay(0.02)  # every chunk, both ways: a few hundred ms for one registration
    server = portal_server(DATABASE_URL=through)

    status, answer = http_post_json(f"{server.url}/api/v1/register", registration("juliet"))

    assert status == HTTPStatus.CREATED, answer
    assert MailAccount.objects.filter(local_part="juliet").count() == 1


# ----- Redis (cache: rate limits, suggestions' cache) ---------------------------------------


@pytest.fixture
def redis_through(
    redis_client: Any, settings: Any, proxy_to: Callable[[int], FaultProxy]
) -> FaultProxy:
    """The cache on the configured Redis, reached through a fault proxy."""
    from urllib.parse import urlsplit

    from django.conf import settings as django_settings

    parts = urlsplit(django_settings.REDIS_URL)
    proxy = proxy_to(parts.port or 6379)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(),
            "KEY_PREFIX": f"faults-{secrets.token_hex(4)}",
            "OPTIONS": django_settings.REDIS_CACHE_OPTIONS,
        }
    }
    settings.RATELIMIT_ENABLE = True
    settings.SUGGESTION_RATE = "5/m"
    return proxy


@pytest.mark.django_db
@pytest.mark.parametrize("fault", ["drop", "stall", "reset"])
def test_suggestions_fail_closed_within_the_redis_timeout_and_count_again_after(
    redis_through: FaultProxy, make_provider: Callable[..., Provider], fault: str
) -> None:
    make_provider(tos_url="https://example.org/tos", privacy_url="https://example.org/")
    client = Client(REMOTE_ADDR="198.18.1.1")

    def ask() -> tuple[int, float]:
        started = time.monotonic()
        answer = client.get("/api/v1/suggestions", {"first_name": "Juliet", "last_name": "C"})
        return answer.status_code, time.monotonic() - started

    assert ask()[0] == HTTPStatus.OK  # one of five counted
    getattr(redis_through, fault)()

    status, seconds = ask()

    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    # A stalled or dropped path costs one read timeout (2 s) per cache call the request
    # makes: the admin-set rate's look-up and the limiter's count, no retries on top (it
    # took three, 6 s, when the failed look-up was also written back).
    assert seconds < 2 * REDIS_TIMEOUT + 1.5, seconds
    redis_through.heal()
    redis_through.cut()  # the client's pooled connection may be mid-answer: start clean
    statuses = [ask()[0] for _ in range(6)]
    # Counting resumed where it was: never unlimited. The failed request may or may not
    # have been counted (the fault may hit after the increment), so four or five pass.
    assert statuses.count(HTTPStatus.OK) in (4, 5), statuses
    assert statuses[-1] == HTTPStatus.TOO_MANY_REQUESTS, statuses


@pytest.mark.django_db
def test_suggestions_through_a_slow_redis_path_are_counted_as_usual(
    redis_through: FaultProxy, make_provider: Callable[..., Provider]
) -> None:
    make_provider(tos_url="https://example.org/tos", privacy_url="https://example.org/")
    redis_through.delay(0.02)
    client = Client(REMOTE_ADDR="198.18.1.2")

    statuses = [
        client.get("/api/v1/suggestions", {"first_name": "Juliet"}).status_code for _ in range(6)
    ]

    assert statuses == [HTTPStatus.OK] * 5 + [HTTPStatus.TOO_MANY_REQUESTS]


# ----- Dovecot's doveadm API ------------------------------------------------------------------


@pytest.fixture
def doveadm_through(
    dovecot: Any, settings: Any, proxy_to: Callable[[int], FaultProxy]
) -> FaultProxy:
    proxy = proxy_to(dovecot.doveadm_port)
    settings.DOVEADM_API_URL = f"http://127.0.0.1:{proxy.port}"
    settings.DOVEADM_API_KEY = dovecot.doveadm_key
    return proxy


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["drop", "stall", "reset"])
def test_a_password_change_completes_within_the_doveadm_timeout_when_dovecot_is_cut_off(
    doveadm_through: FaultProxy, make_provider: Callable[..., Provider], fault: str
) -> None:
    make_provider()
    account = create_account(
        domain="example.org", local_part="nurse", password=PASSWORD, created_via="api"
    )
    session = open_session(account=account, client=ClientInfo(ip="198.18.2.1"))
    assert account_summary(account=account).storage_used is not None  # doveadm answers
    getattr(doveadm_through, fault)()

    started = time.monotonic()
    change_password(
        account=account,
        current_password=PASSWORD,
        password="Nightingale-not-lark-7",
        session=session.session,
    )
    summary = account_summary(account=account)
    seconds = time.monotonic() - started

    # Two doveadm calls (kick, quota): each bounded by its timeout, neither fatal.
    assert seconds < 2 * DOVEADM_TIMEOUT + MARGIN, seconds
    assert summary.storage_used is None  # "unknown", said so, not an error page
    account.refresh_from_db()
    assert verify_password("Nightingale-not-lark-7", account.password)
    assert AccountSession.objects.filter(account=account).count() == 1  # this one stays
    doveadm_through.heal()
    doveadm_through.cut()
    assert account_summary(account=account).storage_used is not None


# ----- PostgreSQL stopped and started for real --------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone (initdb in a temporary folder, a free port),
    so that it can be stopped and started under the live portal; the machine's shared
    server is never touched. Run as the postgres user when the tests run as root."""

    def __init__(self, directory: Path, port: int) -> None:
        import glob

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            need_service("PostgreSQL server binaries", "no /usr/lib/postgresql/*/bin/pg_ctl")
        self.bin = Path(found[-1]).parent
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.url = f"postgres://postgres@127.0.0.1:{port}/portal"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def create(self) -> None:
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "portal")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.directory / "postgres.log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as in a real restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def count_accounts(self, local_part: str) -> int:
        import psycopg

        with psycopg.connect(self.url.replace("postgres://", "postgresql://")) as db:
            row = db.execute(
                "SELECT count(*) FROM accounts_mailaccount WHERE local_part = %s", [local_part]
            ).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def private_postgres(free_port: int) -> Iterator[PrivatePostgres]:
    import shutil
    import tempfile

    # Not pytest's tmp_path: the postgres user must enter it (pytest's base is 0700).
    directory = Path(tempfile.mkdtemp(prefix="mailportal-pg-"))
    server = PrivatePostgres(directory, free_port)
    try:
        server.create()
    except RuntimeError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        need_service("a private PostgreSQL", str(exc))
    yield server
    with contextlib.suppress(RuntimeError):
        server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.django_db(transaction=True)
def test_a_postgres_restart_under_the_live_portal_costs_503s_then_nothing(
    portal_server: Callable[..., PortalServer], private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    env = {**os.environ, "DATABASE_URL": private_postgres.url}
    env.pop("REDIS_URL", None)
    for command in (["migrate", "--noinput"], ["import_providers", "deploy/demo-providers.json"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *command], cwd=django_settings.BASE_DIR, env=env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    server = portal_server(DATABASE_URL=private_postgres.url, PORTAL_TRUSTED_PROXIES="127.0.0.1/32")
    url = f"{server.url}/api/v1/register"

    def register(body: dict[str, Any], client: str) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        status, answer = http_post_json(url, body, {"X-Forwarded-For": client})
        return status, answer, time.monotonic() - started

    assert register(registration("before"), "198.18.3.1")[0] == HTTPStatus.CREATED
    private_postgres.stop()  # the portal's open connection is terminated by the server

    body = registration("during")
    status, answer, seconds = register(body, "198.18.3.2")
    health = http_get_json(f"{server.url}/healthz")

    assert status == HTTPStatus.SERVICE_UNAVAILABLE, answer
    assert seconds < PG_CONNECT_TIMEOUT + MARGIN, seconds
    assert health == (HTTPStatus.SERVICE_UNAVAILABLE, {"status": "down", "database": "down",
                                                      "redis": "not configured"})  # fmt: skip
    private_postgres.start()
    # The first request after the restart finds its held connection dead and opens a new
    # one (CONN_HEALTH_CHECKS): no 500, and the retried registration is made once.
    status, answer, _ = register(body, "198.18.3.3")
    assert status == HTTPStatus.CREATED, answer
    assert private_postgres.count_accounts("during") == 1
    assert private_postgres.count_accounts("before") == 1
    assert http_get_json(f"{server.url}/healthz")[0] == HTTPStatus.OK
    assert "Internal Server Error" not in Path(server.log.name).read_text(errors="replace")


def http_get_json(url: str) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - the test server
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
