"""Test services (PostgreSQL, Redis when configured), settings for tests and factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection

from accounts import dovecot as private_dovecot
from providers.models import Provider, ProviderDomain, ServerSetting
from providers.services import documents
from tests.fakes.tcp_proxy import FaultProxy

# Under REQUIRE_SERVICES=1 (CI) a test that needs a missing service fails instead of
# skipping, so a broken install can never pass as "all green, some skipped".
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") == "1"


def need_service(name: str, reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} is required (REQUIRE_SERVICES=1) but unavailable: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not REQUIRE_SERVICES:
        return
    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
    if missing:
        raise pytest.UsageError(f"REQUIRE_SERVICES=1 but {', '.join(missing)} not set")


@pytest.fixture(autouse=True)
def _test_settings(settings: Any) -> Iterator[None]:
    # Django's test client sends Host: testserver.
    settings.PORTAL_ALLOWED_HOSTS = [*django_settings.PORTAL_ALLOWED_HOSTS, "testserver"]
    # Speed only: the real hasher is tested where it matters.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    documents.reset()
    yield
    documents.reset()


@pytest.fixture
def redis_client() -> Any:
    """A client for the configured Redis; skips (or fails under REQUIRE_SERVICES) without one."""
    if not django_settings.HAS_REDIS:
        need_service("Redis", "REDIS_URL is not set")
    import redis

    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        need_service("Redis", str(exc))
    return client


@pytest.fixture
def cache_down(settings: Any) -> None:
    """Point the cache at a closed port: rate limits must fail closed (RELIABILITY.md 7).

    With the options of the real configuration (REDIS_CACHE_OPTIONS), so that how long the
    refusal takes is the deployment's.
    """
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_free_port()}/0",
            "OPTIONS": django_settings.REDIS_CACHE_OPTIONS,
        }
    }


@dataclass
class ProxiedRedis:
    """The configured Redis reached through a FaultProxy: `url` is REDIS_URL (credentials,
    database) through it; down() makes it refuse connections, up() brings it back."""

    url: str
    proxy: FaultProxy

    def down(self) -> None:
        self.proxy.refuse()

    def up(self) -> None:
        self.proxy.resume()


@pytest.fixture
def redis_proxy(redis_client: Any) -> Iterator[ProxiedRedis]:
    """Redis going down and coming back as this process sees it, without stopping the
    Redis server that other test runs share."""
    parts = urlsplit(django_settings.REDIS_URL)
    proxy = FaultProxy(parts.port or 6379, parts.hostname or "127.0.0.1")
    userinfo = parts.netloc.rpartition("@")[0]
    credentials = f"{userinfo}@" if userinfo else ""
    url = parts._replace(netloc=f"{credentials}127.0.0.1:{proxy.port}").geturl()
    yield ProxiedRedis(url=url, proxy=proxy)
    proxy.close()


class PrivateRedis:
    """A redis-server of this test alone on a free port: stop() and start() it for real.

    Without `config` it keeps nothing on disk (as CI's shared Redis); with `config` (a
    redis.conf such as deploy/redis/mailportal.conf) that file's settings apply, with the
    port, address and data folder overridden. The shared Redis is never touched.
    """

    def __init__(self, directory: Any, config: Any = None) -> None:
        self.directory = directory
        self.config = config
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> None:
        import shutil
        import subprocess

        server = shutil.which("redis-server")
        if server is None:
            need_service("redis-server", "not installed (apt-get install redis-server)")
        argv = [server, *([str(self.config)] if self.config else [])]
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        if not self.config:
            argv += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_listening(self.process, self.port, f"redis-server; see {self.directory}/redis.log")

    def stop(self) -> None:
        """SIGTERM (Redis writes its append-only file and exits), and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[PrivateRedis]:
    """A started PrivateRedis without persistence; stopped after the test."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database_down(transactional_db: None) -> Iterator[Callable[[], None]]:
    """Call it to make the next connection fail (a closed port, or an unopenable file).

    The database is back (settings restored) after the test; a test may restore it earlier
    with connection.close() and connection.settings_dict.update(saved).
    """
    saved = dict(connection.settings_dict)

    def stop() -> None:
        connection.close()
        if connection.vendor == "postgresql":
            connection.settings_dict.update(HOST="127.0.0.1", PORT=str(_free_port()))
            connection.settings_dict["OPTIONS"] = {**saved["OPTIONS"], "connect_timeout": 2}
        else:
            connection.settings_dict["NAME"] = "/nonexistent-dir/none.sqlite3"

    yield stop
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)


@pytest.fixture
def make_provider(db: None) -> Callable[..., Provider]:
    """A saved, validated hosted provider; overrides for fields, domains and servers."""

    def make(
        *,
        domains: tuple[str, ...] = ("example.org",),
        servers: tuple[dict[str, Any], ...] | None = None,
        **fields: Any,
    ) -> Provider:
        slug = fields.pop("slug", domains[0].split(".")[0].replace("xn--", "x"))
        values = {"name": "Example Mail", "short_name": "Example", **fields}
        provider = Provider(slug=slug, **values)
        provider.full_clean()
        provider.save()
        for position, name in enumerate(domains):
            domain = ProviderDomain(provider=provider, name=name, position=position)
            domain.full_clean()
            domain.save()
        if servers is None:
            servers = (
                {"type": "imap", "hostname": f"imap.{domains[0]}", "port": 993},
                {"type": "smtp", "hostname": f"smtp.{domains[0]}", "port": 465},
            )
        for position, server_fields in enumerate(servers):
            server = ServerSetting(provider=provider, position=position, **server_fields)
            server.full_clean()
            server.save()
        return provider

    return make


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    return _free_port()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def dovecot_installed() -> None:
    """Skips (or fails under REQUIRE_SERVICES) unless Debian's Dovecot is installed."""
    missing = private_dovecot.missing_binaries()
    if missing:
        need_service(
            "Dovecot",
            f"not installed: {', '.join(missing)} "
            "(apt-get install dovecot-imapd dovecot-pgsql dovecot-sqlite)",
        )


@pytest.fixture(scope="session")
def dovecot(
    dovecot_installed: None, django_db_setup: None, django_db_blocker: Any
) -> Iterator[private_dovecot.PrivateDovecot]:
    """A private Dovecot from deploy/dovecot/ on a free port, reading the test database.

    Started once per session and stopped at its end (before the test database is dropped).
    Its doveadm HTTP API listens too: `dovecot_api` points the portal at it.
    Dovecot reads through its own database connection, so tests that log in must commit:
    `@pytest.mark.django_db(transaction=True)`. Keep sessions few and short (log out).
    """
    import shutil
    import tempfile
    from pathlib import Path

    with django_db_blocker.unblock():
        # The test database's name is known only now, after django_db_setup.
        database = dict(connection.settings_dict)
    # Not pytest's tmp_path: run as root, the mail is stored by the dovecot user, who
    # cannot enter pytest's private (0700) base directory.
    state = Path(tempfile.mkdtemp(prefix="mailportal-dovecot-"))
    instance = private_dovecot.PrivateDovecot(
        state_dir=state, database=database, port=_free_port(), doveadm_port=_free_port()
    )
    try:
        instance.start()
    except private_dovecot.DovecotError as exc:
        shutil.rmtree(state, ignore_errors=True)
        need_service("Dovecot", str(exc))
    yield instance
    instance.stop()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def dovecot_api(dovecot: private_dovecot.PrivateDovecot, settings: Any) -> None:
    """The portal ends sessions through the private Dovecot's doveadm API (DOVEADM_API_*)."""
    settings.DOVEADM_API_URL = dovecot.api_url
    settings.DOVEADM_API_KEY = dovecot.doveadm_key


class PortalServer:
    """The portal under gunicorn in its own processes, on the test database (see fixture)."""

    def __init__(self, *, port: int, env: dict[str, str], log: Any) -> None:
        import subprocess
        import sys

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "portal.wsgi",
                "--workers",
                "1",
                "--bind",
                f"127.0.0.1:{port}",
                "--graceful-timeout",
                "2",
            ],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        wait_listening(self.process, self.port, f"gunicorn; see {self.log.name}", timeout)

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes (children of its master)."""
        from pathlib import Path

        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_listening(process: Any, port: int, what: str, timeout: float = 30) -> None:
    """Until `process` accepts connections on 127.0.0.1:`port`; RuntimeError if it exits
    or takes longer than `timeout` seconds (`what` names it in the error)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"did not start: {what}") from None
            time.sleep(0.1)


def database_url(database: dict[str, Any]) -> str:
    """A DATABASE_URL naming `database` (a connection's settings_dict), for child processes."""
    from urllib.parse import quote

    if database["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{database['NAME']}"
    user = quote(database.get("USER") or "")
    password = f":{quote(database['PASSWORD'])}" if database.get("PASSWORD") else ""
    host = database.get("HOST") or "127.0.0.1"
    port = f":{database['PORT']}" if database.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{quote(database['NAME'])}"


@pytest.fixture
def portal_server(transactional_db: None, tmp_path: Any) -> Iterator[Callable[..., PortalServer]]:
    """Start the portal under gunicorn (one worker) on the test database; stopped after.

    `portal_server(**env)` adds or overrides environment variables (None removes one).
    REDIS_URL is removed unless given: the child's rate limits and Celery stay its own.
    Its output goes to a log file under tmp_path.
    """

    servers: list[PortalServer] = []

    def start(**overrides: str | None) -> PortalServer:
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(dict(connection.settings_dict)),
            "PORTAL_BASE_URL": f"http://127.0.0.1:{port}",
            "PORTAL_ALLOWED_HOSTS": "127.0.0.1",
        }
        env.pop("REDIS_URL", None)
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        log = (tmp_path / f"gunicorn-{port}.log").open("wb")
        server = PortalServer(port=port, env=env, log=log)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
        server.log.close()


# Debian's Chromium, driven by Playwright (never a browser Playwright downloads itself). The
# flags are the machine's: no sandbox as root, and no background traffic to Google's hosts.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless Chromium; skips (fails under REQUIRE_SERVICES) without it.

    Per test, not per session: Playwright's sync API keeps an event loop in this thread
    while it runs, and Django's ORM refuses to run beside one (SynchronousOnlyOperation) in
    every later test. About a second per browser test.
    """
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        need_service("Chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page, English.

    Playwright's sync API keeps an event loop in this thread, which Django's ORM takes for an
    async context: DJANGO_ALLOW_ASYNC_UNSAFE lets the test query the database between
    browser steps. Set for this test only (Django's deploy check rightly refuses it), and
    never passed to processes the portal_server fixture starts.
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    yield page
    context.close()


# ----- server-rendered forms (the registration pages; self-service pages alike) ------------


def form_values(html: str | bytes, action: str) -> dict[str, str]:
    """The fields a browser would send from the form whose action ends with `action`.

    Hidden and text inputs with their values, checked checkboxes, selected options; no
    submit buttons (add the one "clicked"). AssertionError if no such form is on the page.
    """
    import lxml.html

    document = lxml.html.fromstring(html)
    for form in document.forms:
        if (form.action or "").endswith(action):
            values: dict[str, str] = {}
            for name, value in form.form_values():
                values.setdefault(name, value)
            return values
    raise AssertionError(f"no form posting to …{action} on the page")


@pytest.fixture
def page_form() -> Callable[[str | bytes, str], dict[str, str]]:
    """`page_form(html, action)`: see form_values."""
    return form_values


def http_post_json(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST `body` as JSON over real HTTP (a live test server); the status and parsed answer."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - the live test server's http URL
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            parsed: dict[str, Any] = json.loads(answer.read())
            return answer.status, parsed
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
