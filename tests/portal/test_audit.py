"""Security events (portal/audit.py): RELIABILITY.md check 28, the logging half.

Each event is exactly one record on `portal.security`, one line of JSON with the UTC time,
the client address, the actor and the outcome, and never a credential: the tests run each
front door with a canary password or token and search every record for it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from django.core.cache import cache
from django.test import Client, RequestFactory

from accounts.models import MailAccount
from accounts.services.accounts import create_account
from portal import netguard, ratelimit
from portal.audit import RequestContextMiddleware, security_event
from providers.models import OnboardingToken, Provider
from providers.services import onboarding
from tests.accounts import self_service
from tests.accounts.test_api_register import message

CANARY = "Canary-p4ss-\u00e9t\u00e9-7d1f"


class Events:
    """The security events logged while a test runs, parsed (see the `events` fixture)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def lines(self) -> list[str]:
        return [
            record.getMessage()
            for record in self.caplog.records
            if record.name == "portal.security"
        ]

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.all() if record["event"] == event]

    def assert_no_secret(self, *secrets: str) -> None:
        text = "\n".join(self.lines())
        for secret in secrets:
            spellings = {
                secret,
                quote(secret),
                json.dumps(secret, ensure_ascii=True)[1:-1],
                base64.b64encode(secret.encode()).decode(),
            }
            for spelling in spellings:
                assert spelling not in text, f"{spelling!r} in a security event"


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Iterator[Events]:
    caplog.set_level(logging.INFO, logger="portal.security")
    cache.clear()  # rate-limit counters of earlier tests (Redis under CI)
    yield Events(caplog)


def assert_base_fields(record: dict[str, Any], *, ip: str) -> None:
    """UTC time (ISO 8601, "Z"), just now; the client address; the fields in order."""
    assert list(record)[:5] == ["time", "event", "outcome", "actor", "ip"]
    assert record["time"].endswith("Z")
    when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)
    assert record["ip"] == ip


# ----- the record itself ---------------------------------------------------------------------


def test_a_security_event_is_one_line_of_json_whatever_the_name_holds(events: Events) -> None:
    forged = 'eve\n2026-01-01 INFO portal.security {"event": "login"}\u2028\x85\r"'

    security_event("login", outcome="failure", actor=forged, reason="unknown")

    (line,) = events.lines()
    assert len(line.splitlines()) == 1  # str.splitlines breaks at \n, \r, NEL, U+2028 ...
    assert line.isascii()
    (record,) = events.all()
    assert record["actor"] == forged  # escaped, not lost
    assert record["event"] == "login" and record["outcome"] == "failure"
    assert_base_fields(record, ip="-")


@pytest.mark.parametrize("field", ["password", "new_password", "token", "secret", "code", "hash"])
def test_a_security_event_refuses_a_field_that_would_carry_a_credential(
    events: Events, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        security_event("login", outcome="failure", **{field: "x"})

    assert events.lines() == []


def test_the_client_address_comes_from_the_request_being_served(events: Events) -> None:
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.7")

    def view(_: Any) -> Any:
        security_event("rate_limit", outcome="limited", limit="x")
        return None

    RequestContextMiddleware(view)(request)
    security_event("rate_limit", outcome="limited", limit="y")

    first, after = events.all()
    assert first["ip"] == "192.0.2.7"
    assert after["ip"] == "-"  # the request is over: no stale address


# ----- each front door emits exactly one event --------------------------------------------


@pytest.mark.django_db
def test_a_self_service_login_and_a_failed_one_are_one_event_each(
    events: Events, make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    create_account(domain="example.org", local_part="juliet", password=CANARY, created_via="api")
    client = Client(REMOTE_ADDR="192.0.2.10")

    assert self_service.api_login(client, "juliet@example.org", CANARY).status_code == 200
    wrong = self_service.api_login(client, "Juliet@example.org\nforged", CANARY + "x")
    assert wrong.status_code != 200

    success, failure = events.named("login")
    assert success["outcome"] == "success" and success["actor"] == "juliet@example.org"
    assert failure["outcome"] == "failure" and failure["reason"] == "unknown"
    assert "\n" in failure["actor"] and len(events.lines()[-1].splitlines()) == 1
    for record in (success, failure):
        assert_base_fields(record, ip="192.0.2.10")
    events.assert_no_secret(CANARY, CANARY + "x")


@pytest.mark.django_db
def test_a_registration_and_a_refused_one_are_one_event_each(
    events: Events, make_provider: Callable[..., Provider], settings: Any
) -> None:
    settings.RATELIMIT_ENABLE = False
    make_provider()
    client = Client(REMOTE_ADDR="192.0.2.11")

    def register(username: str, password: str) -> Any:
        body = message(username=username, password=password, thirdPIDs=None)
        return client.post("/api/v1/register", json.dumps(body), content_type="application/json")

    assert register("romeo", CANARY).status_code == 201
    assert register("romeo", CANARY).status_code == 409

    created, refused = events.named("registration")
    assert created["outcome"] == "created" and created["actor"] == "romeo@example.org"
    assert created["via"] == "api" and created["status"] == "active"
    assert refused["outcome"] == "refused" and refused["reason"] == "id_exists"
    for record in (created, refused):
        assert_base_fields(record, ip="192.0.2.11")
    assert MailAccount.objects.count() == 1
    events.assert_no_secret(CANARY)


def test_a_rate_limit_hit_is_one_event(events: Events, settings: Any) -> None:
    settings.SUGGESTION_RATE = "1/m"
    request = RequestFactory().get("/api/v1/suggestions", REMOTE_ADDR="192.0.2.12")

    ratelimit.enforce(request, ratelimit.SUGGESTIONS)
    with pytest.raises(ratelimit.RateLimited):
        ratelimit.enforce(request, ratelimit.SUGGESTIONS)

    (hit,) = events.named("rate_limit")
    assert hit["outcome"] == "limited" and hit["limit"] == "providers.suggestions"


def test_a_rate_limit_that_cannot_count_is_one_unavailable_event(
    events: Events, cache_down: None
) -> None:
    request = RequestFactory().get("/api/v1/suggestions", REMOTE_ADDR="192.0.2.13")

    with pytest.raises(ratelimit.RateLimiterUnavailable):
        ratelimit.enforce(request, ratelimit.SUGGESTIONS)

    (refused,) = events.named("rate_limit")
    assert refused["outcome"] == "unavailable"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/push/secret-path", "loopback"),
        ("gopher://example.org/", "URLs are accepted"),
        ("https://user:pw@example.org/", "user name or password"),
    ],
)
def test_an_egress_refusal_is_one_event_without_the_url(
    events: Events, url: str, reason: str
) -> None:
    with pytest.raises(netguard.EgressRefused):
        netguard.check_url(url, allow_http=False)

    (refused,) = events.named("egress.refused")
    assert reason in refused["reason"]
    events.assert_no_secret("secret-path", "pw@")


@pytest.mark.django_db
def test_a_token_redemption_and_a_refused_one_are_one_event_each(
    events: Events, make_provider: Callable[..., Provider]
) -> None:
    domain = make_provider().domains.get()
    issued = onboarding.issue_token(
        token=OnboardingToken(domain=domain, name="class 7b", max_uses=1), valid_for=None
    )
    client = Client(REMOTE_ADDR="192.0.2.14")

    answer = client.post(f"/dcaccount/{issued.secret}", data=b"", content_type="")
    assert answer.status_code == 200
    password = answer.json()["password"]
    assert client.post(f"/new_email?t={issued.secret}", data=b"", content_type="").status_code == (
        410
    )

    redeemed, refused = events.named("token.redeem")
    assert redeemed["outcome"] == "redeemed" and redeemed["onboarding"] == issued.token.pk
    assert redeemed["actor"] == answer.json()["email"]
    assert refused["outcome"] == "refused" and refused["reason"] == "token_used_up"
    for record in (redeemed, refused):
        assert_base_fields(record, ip="192.0.2.14")
    (registration,) = events.named("registration")  # the account it made, once
    assert registration["onboarding"] == issued.token.pk
    events.assert_no_secret(issued.secret, password)
