"""The served autoconfig documents and accepted host names, memoised per catalog version.

A provider's documents change only when an administrator edits it, so each process keeps
the built bytes and their ETag in memory. A catalog version in the shared cache (Redis in
production) changes on every edit; a process that sees a new version rebuilds lazily. As a
safety net against a lost invalidation (a cache flush, a local-memory cache with several
processes) nothing is kept longer than MAX_AGE seconds.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.db import transaction

from providers import autoconfig
from providers.domains import DomainError, to_ascii
from providers.models import Provider, ProviderDomain

logger = logging.getLogger(__name__)

VERSION_KEY = "providers:catalog-version"
MAX_AGE = 60.0
# How often a process asks the shared cache whether the catalog changed. An edit made in
# this process is seen at once; one made elsewhere within this many seconds. Asking on every
# request cost more than building the answer (docs/benchmarks.md).
VERSION_CHECK_INTERVAL = 1.0
# Host names under which a provider domain's autoconfig is asked for: the domain itself and
# the conventional service names clients try (Thunderbird autoconfig.<d>, Outlook
# autodiscover.<d>).
HOST_PREFIXES = ("", "autoconfig.", "autodiscover.")


@dataclass(frozen=True)
class Document:
    body: bytes
    etag: str


@dataclass
class _Snapshot:
    version: str
    built_at: float
    checked_at: float
    provider_by_domain: dict[str, int]
    hosts: frozenset[str]
    documents: dict[tuple[str, str], Document] = field(default_factory=dict)


_lock = threading.Lock()
_snapshot: _Snapshot | None = None


def catalog_changed(**_: Any) -> None:
    """Signal receiver: invalidate now, and again once the change is committed.

    The immediate bump covers readers of our own transaction (and tests); the bump on commit
    covers a reader that rebuilt from the old rows between the first bump and the commit.
    """
    bump_catalog_version()
    transaction.on_commit(bump_catalog_version)


def bump_catalog_version() -> None:
    global _snapshot
    _snapshot = None
    try:
        cache.set(VERSION_KEY, secrets.token_hex(8), timeout=None)
    except Exception:  # cache down: MAX_AGE still bounds staleness elsewhere
        logger.warning("could not publish the provider catalog version", exc_info=True)


def _current_version() -> str | None:
    try:
        version = cache.get(VERSION_KEY)
        if version is None:
            cache.add(VERSION_KEY, secrets.token_hex(8), timeout=None)
            version = cache.get(VERSION_KEY)
    except Exception:
        logger.warning("provider catalog version unavailable; building uncached", exc_info=True)
        return None
    return str(version) if version is not None else None


def _load(version: str) -> _Snapshot:
    provider_by_domain = dict(ProviderDomain.objects.values_list("name", "provider_id"))
    hosts = frozenset(prefix + domain for domain in provider_by_domain for prefix in HOST_PREFIXES)
    now = time.monotonic()
    return _Snapshot(version, now, now, provider_by_domain, hosts)


def _fresh_snapshot() -> _Snapshot:
    global _snapshot
    snapshot = _snapshot
    now = time.monotonic()
    if snapshot is not None and now - snapshot.built_at < MAX_AGE:
        if now - snapshot.checked_at < VERSION_CHECK_INTERVAL:
            return snapshot
        version = _current_version()
        if version is not None and snapshot.version == version:
            snapshot.checked_at = now
            return snapshot
    else:
        version = _current_version()
    fresh = _load(version or "")
    if version is not None:
        with _lock:
            _snapshot = fresh
    return fresh


def reset() -> None:
    """Forget everything memoised in this process (tests; after a restore)."""
    bump_catalog_version()


def is_provider_host(host: str) -> bool:
    """True when `host` (lower-case ASCII) is <d>, autoconfig.<d> or autodiscover.<d>."""
    return host in _fresh_snapshot().hosts


def provider_for_host(host: str) -> str | None:
    """The provider domain a Host header names (autoconfig./autodiscover. stripped)."""
    known = _fresh_snapshot().provider_by_domain
    for prefix in HOST_PREFIXES:
        if prefix and host.startswith(prefix) and host[len(prefix) :] in known:
            return host[len(prefix) :]
    return host if host in known else None


@functools.lru_cache(maxsize=4096)  # IDNA encoding is most of a cached request's work
def normalise_domain(domain: str) -> str | None:
    try:
        return to_ascii(domain)
    except DomainError:
        return None


def provider_info(domain: str) -> autoconfig.ProviderInfo | None:
    """The settings of the provider owning `domain` (A-label), or None if no one does."""
    provider = (
        Provider.objects.serving_domain(domain).prefetch_related("domains", "servers").first()
    )
    return provider.autoconfig_info() if provider else None


def client_config(domain: str) -> Document | None:
    """The Thunderbird clientConfig for a provider domain (A-label), built once per version."""
    snapshot = _fresh_snapshot()
    provider_id = snapshot.provider_by_domain.get(domain)
    if provider_id is None:
        return None
    # Keyed by provider: every domain of a provider is served the same document.
    key = ("clientconfig", str(provider_id))
    document = snapshot.documents.get(key)
    if document is None:
        info = provider_info(domain)
        if info is None:  # deleted since the snapshot was taken
            return None
        body = autoconfig.client_config(info)
        document = Document(body, autoconfig.etag_for(body))
        snapshot.documents[key] = document
    return document
