"""RELIABILITY.md check 20: an IMAP password given to the push proxy is never persisted.

A canary password (not ASCII) is used for a working subscription, a wrong-password login, a
login to a server that is down, logins by LOGIN to a server without AUTH=PLAIN (imaplib's
LOGIN once raised UnicodeEncodeError carrying the password) and (with Redis) a hand-off that
nobody consumes; then the database dump, every Redis key, the queued Celery message, and
every log (this process, the monitor and push worker processes, Dovecot) are searched for
it in every encoding check 20 lists.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from accounts.dovecot import LOOPBACK, PrivateDovecot
from accounts.services.accounts import create_account
from providers.models import Provider
from pushproxy.models import MonitorState, MonitorWorker, PushSubscription
from pushproxy.services import monitors
from tests.conftest import need_service
from tests.fakes.imapstub import USER as STUB_USER
from tests.fakes.imapstub import ImapStub
from tests.fakes.push_service import PushService
from tests.pushproxy.conftest import Workers
from tests.pushproxy.test_api_subscriptions import append, subscribe

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

# Unique per run, with a non-ASCII letter so that JSON escaping is a different spelling.
CANARY = f"Canäry-{uuid.uuid4().hex[:12]}-pw"


def spellings(username: str) -> dict[str, bytes]:
    """Every form check 20 names: plain, URL-encoded, JSON-escaped, base64 (standard and
    URL-safe, at each of the three alignments inside a longer stream) and base64 of the
    SASL PLAIN string \\0user\\0canary."""
    raw = CANARY.encode("utf-8")
    forms: dict[str, bytes] = {
        "plain": raw,
        "url": quote(CANARY).encode(),
        "url-plus": quote_plus(CANARY).encode(),
        "json": json.dumps(CANARY)[1:-1].encode(),
        "latin-1": CANARY.encode("latin-1"),
    }
    for name, data in {"b64": raw, "sasl": f"\0{username}\0{CANARY}".encode()}.items():
        for encoder in (base64.b64encode, base64.urlsafe_b64encode):
            for offset in range(3):
                encoded = encoder(b"\0" * offset + data)
                # The characters that depend only on `data`, wherever it sits in a stream.
                start = (offset * 4 + 2) // 3
                forms[f"{name}-{encoder.__name__}-{offset}"] = encoded[start + 1 : -4]
    return forms


def hits(blob: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, needle in forms.items() if needle and needle in blob]


@pytest.fixture
def log_records() -> Iterator[list[str]]:
    """Everything this process logs, at DEBUG, formatted as the handlers would."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


def database_dump() -> bytes:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        path = Path(db["NAME"])
        return b"".join(
            p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        need_service("pg_dump", "install postgresql-client")
    return subprocess.run(
        [
            pg_dump,
            "-h",
            db["HOST"] or "127.0.0.1",
            "-p",
            str(db["PORT"] or 5432),
            "-U",
            db["USER"],
            db["NAME"],
        ],
        check=True,
        capture_output=True,
    ).stdout


def redis_values(client: Any) -> bytes:
    """Every key of our Redis database with its value, whatever its type."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            value: Any = [client.get(key)]
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == b"set":
            value = list(client.smembers(key))
        elif kind == b"zset":
            value = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            value = []
        parts += [key, *[v for v in value if v is not None]]
    return b"\n".join(parts)


def test_the_canary_password_is_persisted_nowhere(
    client: Client,
    dovecot: PrivateDovecot,
    make_provider: Callable[..., Provider],
    push_stack: Workers | None,
    push_service: PushService,
    log_records: list[str],
    settings: Any,
) -> None:
    make_provider()
    local_part = f"canary{uuid.uuid4().hex[:8]}"
    address = f"{local_part}@example.org"
    create_account(
        domain="example.org", local_part=local_part, password=CANARY, created_via="admin"
    )

    # A working subscription, a push, an end.
    ok = subscribe(
        client, push_service, port=dovecot.port, username=address, password=CANARY, prefix="ok/"
    )
    assert ok.status_code == 201, ok.content
    append(dovecot.port, address, password=CANARY)
    assert len(push_service.wait_for("/ok/new", timeout=5)) == 1
    # A refused login (a wrong password that contains the canary) and a server that is down.
    wrong = subscribe(
        client,
        push_service,
        port=dovecot.port,
        username=address,
        password=CANARY + "!",
        client_id="b",
    )
    assert wrong.status_code == 401
    down = subscribe(
        client, push_service, port=_closed_port(), username=address, password=CANARY, client_id="c"
    )
    assert (down.status_code, down.json()["code"]) == (502, "imap_unreachable")
    # A server that offers only LOGIN: the canary goes as a UTF-8 literal, right and wrong.
    answers = [ok, wrong, down, *_login_only(client, push_service)]

    queued = b""
    if push_stack is not None:
        queued = _queued_hand_off(client, push_service, address, settings, push_stack)

    forms = spellings(address) | spellings(STUB_USER)
    assert hits(database_dump(), forms) == []
    assert hits("\n".join(log_records).encode(), forms) == []
    assert hits(dovecot.log_path.read_bytes(), forms) == []
    assert hits(json.dumps([answer.json() for answer in answers]).encode(), forms) == []
    if push_stack is not None:
        assert queued and hits(queued, forms) == []
        assert hits(push_stack.log_text().encode(), forms) == []
        import redis

        assert hits(redis_values(redis.Redis.from_url(django_settings.REDIS_URL)), forms) == []
    elif django_settings.HAS_REDIS or _required():
        need_service("Redis", "the broker half of check 20 needs the worker processes")


def _login_only(client: Client, push_service: PushService) -> list[Any]:
    stub = ImapStub(auth_plain=False, password=CANARY).start()
    try:
        right = subscribe(
            client,
            push_service,
            port=stub.port,
            username=STUB_USER,
            password=CANARY,
            client_id="login",
            prefix="login/",
        )
        assert right.status_code == 201, right.content
        wrong = subscribe(
            client,
            push_service,
            port=stub.port,
            username=STUB_USER,
            password=CANARY + "ß",
            client_id="login-wrong",
        )
        assert (wrong.status_code, wrong.json()["code"]) == (401, "imap_auth_failed")
        assert stub.logins == 1 and "AUTHENTICATE" not in stub.commands
        return [right, wrong]
    finally:
        stub.stop()


def _required() -> bool:
    from tests.conftest import REQUIRE_SERVICES

    return REQUIRE_SERVICES


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _queued_hand_off(
    client: Client, push_service: PushService, address: str, settings: Any, workers: Workers
) -> bytes:
    """A hand-off to a monitor that consumes nothing: the Celery message as it waits in Redis."""
    import redis

    settings.PUSHPROXY_LOGIN_WAIT_SECONDS = 1.0
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    MonitorWorker.objects.update(state=MonitorState.STOPPED)
    monitors.register(ghost)
    # A fleet of its own in Redis, where no monitor holds a lease: routing falls back to the
    # monitors alive by the database, which is the ghost alone (the real monitor keeps its
    # shards in the default fleet).
    settings.PUSHPROXY_FLEET_PREFIX = f"{ghost}:"
    try:
        answer = subscribe(
            client, push_service, port=1143, username=address, password=CANARY, client_id="queued"
        )
        assert answer.status_code == 202, answer.content
        assert answer.json()["status"] == "pending"
        broker = redis.Redis.from_url(django_settings.REDIS_URL)
        messages = broker.lrange(monitors.queue_name(ghost), 0, -1)
        assert len(messages) == 1
        envelope = json.loads(messages[0])
        body = base64.b64decode(envelope["body"])
        kwargs = json.loads(body)[1]
        sub = PushSubscription.objects.get(client_id="queued")
        assert kwargs["subscription"] == sub.public_id and len(kwargs["sealed"]) > 40
        assert envelope["headers"]["kwargsrepr"] == repr(
            {"subscription": sub.public_id, "generation": sub.pk}
        )
        assert envelope["headers"]["expires"] is not None
        return messages[0] + b"\n" + body
    finally:
        MonitorWorker.objects.filter(worker_id=ghost).delete()
        monitors.register(workers.worker_id)
        broker = redis.Redis.from_url(django_settings.REDIS_URL)
        broker.delete(monitors.queue_name(ghost), *broker.keys(f"{ghost}:*"))


@pytest.mark.parametrize("offset", [0, 1, 2, 5])
def test_the_scanner_finds_the_canary_in_every_spelling(offset: int) -> None:
    address = "juliet@example.org"
    forms = spellings(address)
    prefix = b"x" * offset
    samples = {
        "plain": prefix + CANARY.encode(),
        "url": prefix + quote(CANARY).encode(),
        "json": json.dumps({"password": CANARY}).encode(),
        "b64": base64.b64encode(prefix + json.dumps({"p": CANARY}, ensure_ascii=False).encode()),
        "b64url": base64.urlsafe_b64encode(prefix + CANARY.encode() + b"tail"),
        "sasl": base64.b64encode(f"\0{address}\0{CANARY}".encode()),
    }
    for name, blob in samples.items():
        assert hits(b"<<" + blob + b">>", forms), name
    assert hits(b"nothing to see", forms) == []
