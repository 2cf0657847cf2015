"""Test services (PostgreSQL, Redis when configured), settings for tests and factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

from accounts import dovecot as private_dovecot
from providers.models import Provider, ProviderDomain, ServerSetting
from providers.services import documents

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
    """Point the cache at a closed port: rate limits must fail closed (RELIABILITY.md 7)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


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
    Dovecot reads through its own database connection, so tests that log in must commit:
    `@pytest.mark.django_db(transaction=True)`. Keep sessions few and short (log out).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from django.db import connection

    with django_db_blocker.unblock():
        # The test database's name is known only now, after django_db_setup.
        database = dict(connection.settings_dict)
    # Not pytest's tmp_path: run as root, the mail is stored by the dovecot user, who
    # cannot enter pytest's private (0700) base directory.
    state = Path(tempfile.mkdtemp(prefix="mailportal-dovecot-"))
    instance = private_dovecot.PrivateDovecot(state_dir=state, database=database, port=_free_port())
    try:
        instance.start()
    except private_dovecot.DovecotError as exc:
        shutil.rmtree(state, ignore_errors=True)
        need_service("Dovecot", str(exc))
    yield instance
    instance.stop()
    shutil.rmtree(state, ignore_errors=True)
