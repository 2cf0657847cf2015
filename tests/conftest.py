"""Test services (PostgreSQL, Redis when configured), settings for tests and factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

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
