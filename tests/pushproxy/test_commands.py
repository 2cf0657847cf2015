"""run_push_monitor (a real process, SIGTERM) and generate_vapid_keys."""

from __future__ import annotations

import io
import json
import signal
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from pushproxy import fleet, webpush
from pushproxy.models import MonitorState, MonitorWorker, PushSubscription
from pushproxy.services import monitors
from tests.conftest import need_service
from tests.fakes.imapstub import PASSWORD, USER, ImapStub
from tests.fakes.push_service import PushService
from tests.pushproxy.conftest import Workers, _wait_for_line, monitor_environment, start_monitor


def test_generate_vapid_keys_prints_a_usable_pair() -> None:
    out = io.StringIO()
    call_command("generate_vapid_keys", stdout=out)
    lines = out.getvalue().splitlines()
    private = lines[0].removeprefix("PUSHPROXY_VAPID_PRIVATE_KEY=")
    public = lines[1].rsplit(" ", 1)[1]
    assert webpush.application_server_key(webpush.load_vapid_key(private)) == public


def test_run_push_monitor_refuses_to_start_in_the_wrong_process() -> None:
    # Without Redis there is nothing to consume; with it, this process is not gevent-patched.
    with pytest.raises(CommandError):
        call_command("run_push_monitor", "--id", "never")


@pytest.mark.services
@pytest.mark.parametrize("monitor_queue", [True, False])
def test_the_monitor_takes_its_commands_without_unacked_bookkeeping(
    redis_client: Any, monitor_queue: bool
) -> None:
    """What `run_push_monitor` does to idle.<id> (through the Worker's own queue selection,
    against the real Redis): a command received and not yet acked leaves no entry in kombu's
    unacked index, and its ack leaves nothing behind, in Redis or in the channel. An ordinary
    queue (False) shows the entry, and acks kept in the channel without AcksIgnored."""
    from celery import Celery
    from django.conf import settings

    from pushproxy.management.commands.run_push_monitor import (
        AcksIgnored,
        _consume_without_acks,
    )

    app = Celery("acks-test", broker=settings.CELERY_BROKER_URL, set_as_current=False)
    queue = f"idle.test-{uuid.uuid4().hex[:12]}"
    if monitor_queue:
        _consume_without_acks(app, queue)
        assert AcksIgnored in app.steps["consumer"]
    app.amqp.queues.select([queue])  # what Celery's Worker does with queues=[queue]

    def entries() -> list[bytes]:
        return [raw for raw in redis_client.hvals("unacked") if queue.encode() in raw]

    received: list[Any] = []
    try:
        with app.connection_for_read() as connection:
            app.send_task("pushproxy.stop", kwargs={"subscription": "none"}, queue=queue)
            consumer = app.amqp.TaskConsumer(
                connection, callbacks=[lambda _body, message: received.append(message)]
            )
            with consumer:
                if monitor_queue:
                    AcksIgnored(SimpleNamespace()).start(SimpleNamespace(task_consumer=consumer))
                connection.drain_events(timeout=5)
                assert len(received) == 1
                assert received[0].delivery_info["routing_key"] == queue
                assert bool(entries()) is not monitor_queue
                received[0].ack()
                assert entries() == []
                assert bool(consumer.channel.qos._dirty) is not monitor_queue
        assert redis_client.llen(queue) == 0
    finally:
        redis_client.delete(*redis_client.keys(f"_kombu.binding*.{queue}"), queue)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_sigterm_logs_every_session_out_and_pushes_reconnect(
    client: Client,
    push_stack: Workers | None,
    push_service: PushService,
    tmp_path: Any,
    settings: Any,
) -> None:
    if push_stack is None:
        need_service("Redis", "the monitor process needs REDIS_URL")
        return
    stub = ImapStub().start()
    worker_id = f"sigterm-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "monitor.log"
    # A fleet of its own, so that the account's shard can only be the new monitor's (in the
    # shared fleet the session's monitor may hold it).
    prefix = f"test-{worker_id}:"
    settings.PUSHPROXY_FLEET_PREFIX = prefix
    process = start_monitor(worker_id, monitor_environment(PUSHPROXY_FLEET_PREFIX=prefix), log)
    try:
        _wait_for_line(log, "ready.", process, timeout=60)
        # Only the new monitor is alive, also for routing's database fallback.
        MonitorWorker.objects.exclude(worker_id=worker_id).update(state=MonitorState.STOPPED)
        body = {
            "imap": {
                "host": "127.0.0.1",
                "port": stub.port,
                "security": "none",
                "username": USER,
                "password": PASSWORD,
            },
            "endpoints": {
                "newMail": {"url": push_service.url("/n")},
                "reconnect": {"url": push_service.url("/r")},
            },
            "clientId": "phone",
        }
        answer = client.post(
            "/api/v1/push/subscriptions", data=json.dumps(body), content_type="application/json"
        )
        assert answer.status_code == 201, answer.content
        assert PushSubscription.objects.get().monitor == worker_id

        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert time.monotonic() - stopped < 20

        assert stub.wait_for(lambda: stub.connections == 0)
        assert "LOGOUT" in stub.commands
        [push] = push_service.wait_for("/r", timeout=10)
        assert json.loads(push.body)["reason"] == "shutdown"
        assert MonitorWorker.objects.get(worker_id=worker_id).state == MonitorState.STOPPED
        assert f"monitor {worker_id} stopped: 1 sessions logged out" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        stub.stop()
        monitors.register(push_stack.worker_id)
        redis = fleet.client()
        for key in redis.scan_iter(f"{prefix}*"):
            redis.delete(key)
