"""The push proxy's test stack: settings for loopback targets, the monitor and push worker
(real processes on Redis under REQUIRE_SERVICES; the embedded manager without Redis),
local push services and extra Dovecot instances."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache

from accounts import dovecot as private_dovecot
from pushproxy import monitor
from tests.conftest import _free_port, need_service
from tests.fakes.push_service import PushService

ROOT = Path(__file__).resolve().parents[2]
# The monitor subprocess polls mailboxes without IDLE this often (env PUSHPROXY_POLL_SECONDS).
POLL_SECONDS = 2


@dataclass
class Workers:
    """The real processes: `run_push_monitor` (gevent, queue idle.<id>) and a push sender."""

    worker_id: str
    logs: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def queue(self) -> str:
        return f"idle.{self.worker_id}"

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def _wait_for_line(
    path: Path, needle: str, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(
        f"{path.name}: no {needle!r} in time:\n{path.read_text(errors='replace')[-3000:]}"
    )


def monitor_environment(**extra: str) -> dict[str, str]:
    """The environment of a `run_push_monitor` child on the test database: loopback IMAP and
    push endpoints allowed, plus `extra`."""
    from django.db import connection

    db = connection.settings_dict
    database = (
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    return {
        **os.environ,
        "DATABASE_URL": database,
        "PORTAL_EGRESS_ALLOW": "127.0.0.0/8",
        "PUSHPROXY_ALLOW_PLAINTEXT": "1",
        **extra,
    }


def start_monitor(worker_id: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`manage.py run_push_monitor --id <worker_id>` as a process of its own, output in `log`."""
    with log.open("wb") as handle:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "manage.py", "run_push_monitor", "--id", worker_id],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="session")
def push_workers(django_db_setup: None, django_db_blocker: Any) -> Iterator[Workers | None]:
    """Under Redis: a monitor process and a push worker on the test database. Without
    Redis: None (the embedded manager in this process does the work)."""
    if not django_settings.HAS_REDIS:
        yield None
        return
    from django.db import connection

    with django_db_blocker.unblock():
        database = dict(connection.settings_dict)
    if not database["ENGINE"].endswith("postgresql"):
        need_service("PostgreSQL", "worker processes share the test database over PostgreSQL")
    url = (
        f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:"
        f"{database['PORT'] or 5432}/{database['NAME']}"
    )
    logs = Path(tempfile.mkdtemp(prefix="mailportal-push-logs-"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": django_settings.REDIS_URL,
        "PORTAL_EGRESS_ALLOW": "127.0.0.0/8",
        "PUSHPROXY_ALLOW_PLAINTEXT": "1",
        "PUSHPROXY_POLL_SECONDS": str(POLL_SECONDS),
        "PYTHONUNBUFFERED": "1",
    }
    worker_id = f"test-{uuid.uuid4().hex[:8]}"
    python = sys.executable
    commands = {
        "monitor": [
            python,
            "manage.py",
            "run_push_monitor",
            "--id",
            worker_id,
            "--concurrency",
            "20",
        ],
        "push": [
            python,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "-Q",
            "push",
            "-P",
            "threads",
            "-c",
            "4",
            "-n",
            f"push-{worker_id}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ],
    }
    processes = []
    try:
        for name, command in commands.items():
            with (logs / f"{name}.log").open("wb") as log:  # the child keeps its own copy
                processes.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        for name, process in zip(commands, processes, strict=True):
            _wait_for_line(logs / f"{name}.log", "ready.", process, timeout=60)
    except Exception:
        for process in processes:
            process.kill()
        raise
    workers = Workers(worker_id, logs, processes)
    yield workers
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture
def push_settings(settings: Any) -> Any:
    """Loopback push services and IMAP servers are reachable; plaintext is allowed."""
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    settings.PUSHPROXY_ALLOW_PLAINTEXT = True
    settings.PUSHPROXY_POLL_SECONDS = POLL_SECONDS
    settings.PUSH_SUBSCRIPTION_RATE = "1000/h"
    settings.PUSH_LOGIN_RATE = "1000/m"
    cache.clear()
    return settings


@pytest.fixture
def push_stack(
    push_settings: Any, push_workers: Workers | None, transactional_db: None
) -> Iterator[Workers | None]:
    """A monitor ready for sessions; every session logged out after the test."""
    from pushproxy.services import monitors
    from pushproxy.tasks import drain

    monitor.reset_manager()
    if push_workers is not None:
        monitors.register(push_workers.worker_id)
    yield push_workers
    if push_workers is not None:
        drain.apply_async(kwargs={"notify": False, "reopen": True}, queue=push_workers.queue).get(
            timeout=30
        )
    monitor.reset_manager()


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService().start()
    yield service
    service.stop()


class DovecotWithoutIdle(private_dovecot.PrivateDovecot):
    """The shipped configuration, with IDLE taken out of the capability list."""

    def write_config(self) -> None:
        super().write_config()
        with self.config_path.open("a", encoding="utf-8") as config:
            config.write(
                "\n# Test: a server that does not announce IDLE (pushproxy polls it).\n"
                "protocol imap {\n"
                "  imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE NAMESPACE UIDPLUS\n"
                "}\n"
            )


@pytest.fixture
def extra_dovecot(
    dovecot: private_dovecot.PrivateDovecot,
) -> Iterator[Callable[..., private_dovecot.PrivateDovecot]]:
    """Starts further Dovecot instances on the test database (stopped after the test)."""
    started: list[tuple[private_dovecot.PrivateDovecot, Path]] = []

    def start(*, idle: bool = True) -> private_dovecot.PrivateDovecot:
        state = Path(tempfile.mkdtemp(prefix="mailportal-dovecot-"))
        kind = private_dovecot.PrivateDovecot if idle else DovecotWithoutIdle
        instance = kind(state_dir=state, database=dovecot.database, port=_free_port())
        started.append((instance, state))
        instance.start()
        return instance

    yield start
    for instance, state in started:
        instance.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def make_subscription(db: None) -> Callable[..., Any]:
    """A subscription row as the monitor leaves it once logged in (active, idle)."""
    from pushproxy import imap
    from pushproxy.models import PushSubscription, Status, token_hash, username_hash

    def make(
        *, new_mail: str, reconnect: str, client_id: str = "phone", **fields: Any
    ) -> PushSubscription:
        mailbox = imap.Mailbox("imap.example.org", 993, "tls", "juliet@example.org")
        values: dict[str, Any] = {
            "token_hash": token_hash(uuid.uuid4().hex),
            "account_key": mailbox.account_key,
            "client_id": client_id,
            "host": mailbox.host,
            "port": mailbox.port,
            "security": mailbox.security,
            "username": mailbox.username,
            "username_hash": username_hash(mailbox.username),
            "new_mail_url": new_mail,
            "new_mail_format": "json",
            "reconnect_url": reconnect,
            "reconnect_format": "json",
            "status": Status.ACTIVE,
            "mode": "idle",
            "monitor": "embedded",
        }
        values.update(fields)
        return PushSubscription.objects.create(**values)

    return make


@pytest.fixture
def sub(
    make_subscription: Callable[..., Any], push_service: PushService, push_settings: Any
) -> Any:
    """An active subscription whose endpoints are /new and /reconnect on `push_service`."""
    return make_subscription(
        new_mail=push_service.url("/new"), reconnect=push_service.url("/reconnect")
    )
