"""portal.celery: what the Celery app sets up for every process."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
import redis
import redis.utils

import portal.celery  # noqa: F401 - the module under test runs at import


def test_building_redis_clients_reads_the_package_metadata_at_most_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # kombu and Celery's result backend build a client per operation; redis-py 8 would read
    # and parse its METADATA file for each (docs/benchmarks.md, "Push fleet path").
    calls: list[str] = []
    original = metadata.version

    def counting(name: str) -> Any:
        calls.append(name)
        return original(name)

    monkeypatch.setattr(redis.utils.metadata, "version", counting)
    clients = [redis.Redis(host="127.0.0.1", port=1) for _ in range(50)]
    assert len(clients) == 50
    assert calls.count("redis") <= 1
    assert redis.utils.get_lib_version() == original("redis")
