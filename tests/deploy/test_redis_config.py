"""deploy/redis/mailportal.conf: a task queued while no worker runs survives a Redis restart.

Celery's queues live in Redis lists. Without persistence (CI's shared Redis, a bare
`redis-server`) a restart empties them and the queued work is gone without a trace; with
the shipped configuration (append-only file) the task is still queued after the restart
and a worker runs it exactly once. RELIABILITY.md check 7 ("after Redis returns, delivered
tasks == queued tasks"), invariant 4.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.conf import settings as django_settings
from django.db import connection

from tests.accounts.test_tasks import celery_worker
from tests.conftest import PrivateRedis, database_url

pytestmark = [pytest.mark.services]

CONFIG = Path(django_settings.BASE_DIR) / "deploy" / "redis" / "mailportal.conf"


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, config=CONFIG if request.param == "shipped" else None)
    server.start()
    yield server
    server.stop()


def sender(url: str) -> Celery:
    """A Celery client of this Redis (the portal's own app stays on the suite's Redis)."""
    app = Celery("deploy-test", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


def queue_one_task(server: PrivateRedis) -> tuple[str, str]:
    """A reconcile pass queued on a queue of its own; (queue, task id)."""
    queue = f"deploy-test-{uuid.uuid4().hex[:8]}"
    app = sender(server.url)
    result = app.send_task("accounts.reconcile_mailboxes", queue=queue)
    app.close()
    return queue, result.id


@pytest.mark.parametrize("redis_server", ["bare"], indirect=True)
def test_a_redis_without_persistence_loses_queued_tasks_on_restart(
    redis_server: PrivateRedis,
) -> None:
    queue, _ = queue_one_task(redis_server)
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(queue) == 1
    client.close()

    redis_server.stop()
    redis_server.start()

    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(queue) == 0  # the work is gone, and nothing says so
    client.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("redis_server", ["shipped"], indirect=True)
def test_with_the_shipped_config_a_queued_task_survives_a_restart_and_runs_once(
    redis_server: PrivateRedis, tmp_path: Path, settings: Any
) -> None:
    queue, task_id = queue_one_task(redis_server)

    redis_server.stop()  # SIGTERM: Redis writes its append-only file and exits
    redis_server.start()

    client = redis.Redis.from_url(redis_server.url)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.llen(queue) == 1
    env = {
        **os.environ,
        "DATABASE_URL": database_url(dict(connection.settings_dict)),
        "REDIS_URL": redis_server.url,
    }
    app = sender(redis_server.url)
    with celery_worker(queue, env, tmp_path / "worker.log"):
        outcome = app.AsyncResult(task_id).get(timeout=120)
    app.close()

    assert outcome["orphan_mailboxes"] == 0 and outcome["missing_mailboxes"] == 0
    assert client.llen(queue) == 0  # delivered, acknowledged, not queued twice
    log = (tmp_path / "worker.log").read_text(encoding="utf-8")
    assert log.count(f"Task accounts.reconcile_mailboxes[{task_id}] received") == 1
    client.close()
