"""Redis stopped for real under the live portal: RELIABILITY.md check 7, invariant 7.

The portal runs under gunicorn on PostgreSQL with a Redis of its own (a private
redis-server on a free port: the machine's shared Redis is never stopped). Every
rate-limited door is asked while Redis runs, after it was stopped, and after it was
started again, without restarting the portal: while it is down each door answers 503 with
Retry-After within the Redis timeouts (never 500, never a hang, never unlimited) and
nothing is created; once it is back every door works again.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest
from django.contrib.auth.hashers import Argon2PasswordHasher
from django.contrib.auth.models import User

from accounts import cpe3
from accounts.models import MailAccount
from providers.models import OnboardingToken, Provider
from providers.services import onboarding
from tests.conftest import PortalServer, PrivateRedis

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ADMIN_PASSWORD = "Admin-outage-pw-2718"
# Redis refused: known at once. The portal's Redis clients retry a lost connection once
# and time out after 2 s (REDIS_CACHE_OPTIONS); a door may touch the cache twice.
LIMIT_SECONDS = 5.0


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """urllib with a cookie jar against the live portal."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            _NoRedirect(),
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        data, all_headers = None, dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
        elif method == "POST":
            data = b""
        request = urllib.request.Request(  # noqa: S310 - the live test server
            self.base + path, data=data, headers=all_headers, method=method
        )
        started = time.monotonic()
        try:
            with self.opener.open(request, timeout=30) as answer:
                body = answer.read()
                return Answer(answer.status, answer.headers, body, time.monotonic() - started)
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read(), time.monotonic() - started)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 302 is the answer itself (the admin login's success)


@dataclass
class Door:
    """One rate-limited entrance, its request, and what it answers while Redis is up."""

    name: str
    call: Callable[[], Answer]
    up: set[int]


def doors(server: PortalServer, token_secret: str) -> list[Door]:
    client = Client(server.url)

    def suggestions() -> Answer:
        return client.send("GET", "/api/v1/suggestions?first_name=Juliet&last_name=Capulet")

    def register() -> Answer:
        body = {
            "id": secrets.token_hex(8),
            "type": cpe3.REGISTER,
            "to": ["example.org"],
            "payload": {"username": f"u{secrets.token_hex(4)}", "password": "Balcony-42-night"},
        }
        return client.send("POST", "/api/v1/register", json_body=body)

    def login_prep() -> Answer:
        return client.send("POST", "/api/v1/account/login-prep", json_body={})

    def dcaccount() -> Answer:
        return client.send("POST", f"/dcaccount/{token_secret}")

    def push_subscribe() -> Answer:
        return client.send("POST", "/api/v1/push/subscriptions", json_body={})

    def admin_login() -> Answer:
        admin = Client(server.url)
        page = admin.send("GET", "/admin/login/")
        found = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        assert found is not None, page.body[:500]
        form = {
            "csrfmiddlewaretoken": found.group(1).decode(),
            "username": "root",
            "password": ADMIN_PASSWORD,
            "next": "/admin/",
        }
        return admin.send(
            "POST", "/admin/login/", form=form, headers={"Referer": server.url + "/admin/login/"}
        )

    return [
        Door("suggestions", suggestions, {HTTPStatus.OK}),
        Door("register", register, {HTTPStatus.CREATED}),
        Door("login-prep", login_prep, {HTTPStatus.OK}),
        Door("dcaccount", dcaccount, {HTTPStatus.OK}),
        # Refused as invalid (an empty body) once counted: the limiter ran and let it pass.
        Door(
            "push-subscribe",
            push_subscribe,
            {HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY},
        ),
        Door("admin-login", admin_login, {HTTPStatus.FOUND}),
    ]


def test_every_rate_limited_door_fails_closed_while_redis_is_stopped_and_works_after(
    portal_server: Callable[..., PortalServer],
    private_redis: PrivateRedis,
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(tos_url="https://example.org/tos", privacy_url="https://example.org/")
    issued = onboarding.issue_token(
        token=OnboardingToken(domain=provider.domains.get(), name="outage", max_uses=10),
        valid_for=None,
    )
    root = User.objects.create_superuser("root", "root@example.org", ADMIN_PASSWORD)
    # The portal's own hasher (the test process hashes with MD5 for speed, the portal not).
    hasher = Argon2PasswordHasher()
    root.password = hasher.encode(ADMIN_PASSWORD, hasher.salt())
    root.save(update_fields=["password"])
    server = portal_server(REDIS_URL=private_redis.url)
    entrances = doors(server, issued.secret)

    def ask_all() -> dict[str, Answer]:
        return {door.name: door.call() for door in entrances}

    before = ask_all()
    for door in entrances:
        assert before[door.name].status in door.up, (door.name, before[door.name].body[:300])
    created = MailAccount.objects.count()
    assert created == 2  # register and dcaccount

    private_redis.stop()
    down = ask_all()
    health = Client(server.url).send("GET", "/healthz")

    for name, answer in down.items():
        assert answer.status == HTTPStatus.SERVICE_UNAVAILABLE, (name, answer.body[:300])
        assert int(answer.headers["Retry-After"]) > 0, name
        assert answer.seconds < LIMIT_SECONDS, (name, answer.seconds)
    assert down["suggestions"].json()["code"] == "ratelimit_unavailable"
    assert down["dcaccount"].json()["code"] == "ratelimit_unavailable"
    assert health.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert health.json()["redis"] == "down" and health.json()["database"] == "ok"
    assert MailAccount.objects.count() == created  # nothing made while unlimited-or-nothing

    private_redis.start()  # the same port, empty: counters start again
    after = ask_all()
    for door in entrances:
        assert after[door.name].status in door.up, (door.name, after[door.name].body[:300])
    assert MailAccount.objects.count() == created + 2
    assert Client(server.url).send("GET", "/healthz").status == HTTPStatus.OK
    issued.token.refresh_from_db()
    assert issued.token.use_count == 2  # one use each time it answered 200, none while down
    log = server.log.name
    with open(log, encoding="utf-8", errors="replace") as output:
        assert "Internal Server Error" not in output.read()
