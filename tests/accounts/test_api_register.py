"""POST /api/v1/register and /api/v1/register/verify (specs/inband-registration.md).

RELIABILITY.md checks 1 (race), 3 (idempotency), 4 (gates), 6 (database down), 7 (cache
down), 9 (no plaintext password stored or logged) and 10 (exact quota, Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.apps import apps
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts import cpe3, web
from accounts.mailbox import _load as load_backend
from accounts.models import (
    AccountSession,
    AccountStatus,
    MailAccount,
    RegistrationRequest,
    ThirdPartyID,
    VerificationCode,
)
from accounts.services.names import BUILTIN_RESERVED
from providers.models import Provider, Registration
from tests.accounts.self_service import assert_report_keeps_out
from tests.conftest import http_post_json

URL = "/api/v1/register"
VERIFY_URL = "/api/v1/register/verify"
PASSWORD = "romeo-and-juliet-42"


def message(**payload: Any) -> dict[str, Any]:
    """A valid registration message; payload keys override (None removes a key)."""
    body: dict[str, Any] = {
        "username": "juliet",
        "thirdPIDs": [{"type": "email", "value": "juliet@capulet.example"}],
        "password": PASSWORD,
        "loginOnSuccess": False,
    }
    body.update(payload)
    body = {key: value for key, value in body.items() if value is not None}
    return {
        "id": secrets.token_hex(8),
        "type": cpe3.REGISTER,
        "to": ["example.org"],
        "payload": body,
    }


def post(client: Client, body: Any, url: str = URL, **extra: Any) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    content_type = extra.pop("content_type", "application/json")
    return client.post(url, data=data, content_type=content_type, **extra)


def err_id(response: Any) -> str:
    errid: str = response.json()["payload"]["errID"]
    return errid


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    # Tests about limits switch it back on, with client addresses of their own.
    settings.RATELIMIT_ENABLE = False


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def new_ip() -> str:
    """A client address (its own /64) no earlier run has counted: Redis keeps counters."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


@pytest.fixture
def fresh_ip() -> str:
    return new_ip()


# ----- success -----------------------------------------------------------------------------


def test_register_answers_201_with_the_user_id_in_the_envelope(
    client: Client, provider: Provider
) -> None:
    body = message()
    response = post(client, body)
    assert response.status_code == HTTPStatus.CREATED
    assert response.json() == {
        "id": body["id"],
        "type": cpe3.REGISTER,
        "from": "example.org",
        "ok": True,
        "payload": {"userID": "@juliet@example.org"},
    }
    account = MailAccount.objects.get()
    assert account.address == "juliet@example.org"
    assert account.status == AccountStatus.ACTIVE
    assert account.created_via == "api"
    assert sorted(account.third_pids.values_list("kind", "value")) == [
        ("email", "juliet@capulet.example")
    ]


def test_register_stores_both_third_party_ids_normalised(
    client: Client, provider: Provider
) -> None:
    pids = [
        {"type": "email", "value": "Juliet@Capulet.Example"},
        {"type": "msisdn", "value": "+1 234 567 890"},
    ]
    response = post(client, message(thirdPIDs=pids))
    assert response.status_code == HTTPStatus.CREATED
    assert sorted(ThirdPartyID.objects.values_list("kind", "value")) == [
        ("email", "juliet@capulet.example"),
        ("msisdn", "+1234567890"),
    ]


def test_register_without_username_takes_the_email_local_part(
    client: Client, provider: Provider
) -> None:
    response = post(client, message(username=None))
    assert response.status_code == HTTPStatus.CREATED
    assert response.json()["payload"] == {
        "userID": "juliet@capulet.example",
        "address": "juliet@example.org",
    }
    assert MailAccount.objects.get().local_part == "juliet"


def test_register_without_username_asks_for_one_when_the_local_part_is_taken(
    client: Client, provider: Provider
) -> None:
    assert post(client, message(thirdPIDs=[])).status_code == HTTPStatus.CREATED
    response = post(client, message(username=None))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(response) == cpe3.BAD_REQUEST
    assert "username" in response.json()["payload"]["fields"]["payload.username"].lower()
    assert MailAccount.objects.count() == 1


@pytest.mark.parametrize(
    "pids",
    [
        [{"type": "msisdn", "value": "+1234567890"}],
        [{"type": "email", "value": "post.master@capulet.example"}],
        [{"type": "email", "value": "juliet+tag@capulet.example"}],
    ],
)
def test_register_without_username_asks_for_one_when_none_can_be_derived(
    client: Client, provider: Provider, pids: list[dict[str, str]]
) -> None:
    response = post(client, message(username=None, thirdPIDs=pids))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "payload.username" in response.json()["payload"]["fields"]
    assert not MailAccount.objects.exists()


def login_client(login: dict[str, str]) -> Client:
    """A new client holding the loginPayload's session, as an app would use it."""
    holder = Client(HTTP_X_CSRF_TOKEN=login["csrfToken"])
    holder.cookies[web.session_cookie_name()] = login["sessionToken"]
    return holder


def test_register_with_login_on_success_answers_a_session_that_opens_the_account_api(
    client: Client, provider: Provider
) -> None:
    body = message(loginOnSuccess=True)
    response = post(client, body)

    assert response.status_code == HTTPStatus.CREATED
    payload = response.json()["payload"]
    assert payload["userID"] == "@juliet@example.org"
    login = payload["loginPayload"]
    assert set(login) == {"sessionToken", "csrfToken", "expiresAt"}
    session = AccountSession.objects.get()
    assert session.account.address == "juliet@example.org"
    # Only the token's SHA-256 is stored.
    assert session.token_hash == hashlib.sha256(login["sessionToken"].encode()).hexdigest()
    assert login["expiresAt"] == session.expires_at.isoformat()
    answer = login_client(login).get("/api/v1/account")
    assert answer.status_code == HTTPStatus.OK
    assert answer.json()["address"] == "juliet@example.org"


def test_a_replayed_login_on_success_answer_holds_no_session(
    client: Client, provider: Provider
) -> None:
    body = message(loginOnSuccess=True)
    first = post(client, body).json()["payload"]["loginPayload"]

    replay = post(client, body)

    assert replay.status_code == HTTPStatus.CREATED
    assert replay["Idempotent-Replayed"] == "true"
    payload = replay.json()["payload"]
    assert "loginPayload" not in payload
    assert payload["loginError"]["errID"] == cpe3.LOGIN_REPLAYED
    assert AccountSession.objects.count() == 1
    stored = json.dumps(RegistrationRequest.objects.get().response)
    assert first["sessionToken"] not in stored
    assert first["csrfToken"] not in stored


def test_login_on_success_opens_a_new_session_whatever_cookie_the_client_held(
    client: Client, provider: Provider
) -> None:
    romeo = post(client, message(username="romeo", thirdPIDs=[], loginOnSuccess=True))
    held = romeo.json()["payload"]["loginPayload"]["sessionToken"]
    client.cookies[web.session_cookie_name()] = held

    juliet = post(client, message(loginOnSuccess=True)).json()["payload"]["loginPayload"]

    # RELIABILITY.md check 15: the session id after login is never one held before, and the
    # one held before ends, as at Login (no session id survives a login).
    assert juliet["sessionToken"] != held
    assert login_client(juliet).get("/api/v1/account").json()["address"] == "juliet@example.org"
    stale = login_client(romeo.json()["payload"]["loginPayload"])
    assert stale.get("/api/v1/account").json()["code"] == "user:badAuth"
    assert AccountSession.objects.count() == 1


def test_the_error_report_of_a_failing_registration_holds_no_password_and_no_token(
    client: Client,
    provider: Provider,
    error_reports: Callable[[], str],
    hasher_breaks: Callable[[], None],
) -> None:
    held = post(client, message(username="romeo", thirdPIDs=[], loginOnSuccess=True)).json()
    token = held["payload"]["loginPayload"]["sessionToken"]
    client.cookies[web.session_cookie_name()] = token
    hasher_breaks()
    client.raise_request_exception = False
    canary = f"Canary-{secrets.token_hex(8)}"

    response = post(client, message(password=canary, loginOnSuccess=True))

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert_report_keeps_out(error_reports(), raised_in="create_account", secrets=(canary, token))


def test_login_on_success_stores_a_user_agent_the_database_cannot_take_cleaned(
    provider: Provider,
) -> None:
    # The account is made before the session: a crash there would answer 500 for an
    # account that exists (and its retry id_exists).
    client = Client(HTTP_USER_AGENT="Delta\x00Chat")

    response = post(client, message(loginOnSuccess=True))

    assert response.status_code == HTTPStatus.CREATED
    assert "loginPayload" in response.json()["payload"]
    assert AccountSession.objects.get().user_agent == "DeltaChat"


def test_login_on_success_gives_no_session_to_an_account_awaiting_approval(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(require_approval=True)

    response = post(client, message(loginOnSuccess=True))

    assert response.status_code == HTTPStatus.ACCEPTED
    payload = response.json()["payload"]
    assert "loginPayload" not in payload
    assert payload["loginError"]["errID"] == cpe3.LOGIN_NOT_ACTIVE
    assert not AccountSession.objects.exists()
    assert MailAccount.objects.count() == 1


# ----- the error table -----------------------------------------------------------------------


def test_register_answers_id_exists_409_when_the_username_is_taken(
    client: Client, provider: Provider
) -> None:
    assert post(client, message()).status_code == HTTPStatus.CREATED
    body = message(username="JULIET", thirdPIDs=[])
    response = post(client, body)
    assert response.status_code == HTTPStatus.CONFLICT
    assert response.json() == {
        "id": body["id"],
        "type": cpe3.REGISTER,
        "from": "example.org",
        "ok": False,
        "payload": {"errID": cpe3.ID_EXISTS, "errText": response.json()["payload"]["errText"]},
    }
    assert MailAccount.objects.count() == 1


@pytest.mark.parametrize(
    "pid",
    [
        {"type": "email", "value": "JULIET@capulet.example"},
        {"type": "msisdn", "value": "0012 345 678 90"},
    ],
)
def test_register_answers_id_exists_409_when_a_third_party_id_is_taken(
    client: Client, provider: Provider, pid: dict[str, str]
) -> None:
    first = message(
        thirdPIDs=[
            {"type": "email", "value": "juliet@capulet.example"},
            {"type": "msisdn", "value": "+1234567890"},
        ]
    )
    assert post(client, first).status_code == HTTPStatus.CREATED
    response = post(client, message(username="romeo", thirdPIDs=[pid]))
    assert response.status_code == HTTPStatus.CONFLICT
    assert err_id(response) == cpe3.ID_EXISTS
    assert MailAccount.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "to"),
    [
        ({"registration": Registration.CLOSED}, "example.org"),
        ({"registration": Registration.TOKEN}, "example.org"),
        ({"enabled": False}, "example.org"),
        ({"hosted": False, "registration_url": "https://example.org/signup"}, "example.org"),
        ({}, "not-hosted.example"),
        ({}, "not a domain"),
    ],
)
def test_register_answers_reg_disabled_403_and_creates_nothing(
    client: Client, provider: Provider, change: dict[str, Any], to: str
) -> None:
    Provider.objects.filter(pk=provider.pk).update(**change)
    body = message()
    body["to"] = [to]
    response = post(client, body)
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert err_id(response) == cpe3.REG_DISABLED
    assert not MailAccount.objects.exists()
    assert not ThirdPartyID.objects.exists()


@pytest.mark.parametrize("password", ["short1!", "password123", "juliet-example", "ab\x01cdefghij"])
def test_register_answers_weak_password_400(
    client: Client, provider: Provider, password: str
) -> None:
    response = post(client, message(password=password))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(response) == cpe3.WEAK_PASSWORD
    assert not MailAccount.objects.exists()


def test_register_answers_weak_password_past_a_raised_minimum(
    client: Client, provider: Provider
) -> None:
    Provider.objects.filter(pk=provider.pk).update(password_min_length=24)
    response = post(client, message())
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(response) == cpe3.WEAK_PASSWORD
    assert "24" in response.json()["payload"]["errText"]


def _with(path: str, value: Any) -> dict[str, Any]:
    body = message()
    target: Any = body
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return body


_DELETE = object()

MALFORMED_BODIES: list[tuple[str, bytes | str | dict[str, Any], str]] = [
    ("not json", b"{'id': 1", "body"),
    ("truncated", b'{"id": "a", "type": ', "body"),
    ("not utf-8", b'{"id": "\xff\xfe"}', "body"),
    ("a list", b"[1, 2]", "body"),
    ("a string", b'"hello"', "body"),
    ("null", b"null", "body"),
    ("empty object", b"{}", "body"),
    ("NaN", b'{"id": NaN}', "body"),
    ("duplicate key", b'{"id": "a", "id": "b"}', "body"),
    ("deep nesting", b"[" * 10_000 + b"]" * 10_000, "body"),
    ("NUL", json.dumps(_with("id", "a\x00b")), "body"),
    ("lone surrogate", '{"id": "\\ud800", "type": "x"}', "body"),
    ("unknown type", _with("type", "urn:cadmium:profile:login"), "type"),
    ("type not a string", _with("type", 3), "type"),
    ("missing id", _with("id", _DELETE), "id"),
    ("id a number", _with("id", 1234), "id"),
    ("id with a newline", _with("id", "ab\ncd"), "id"),
    ("id too long", _with("id", "x" * 201), "id"),
    ("to a string", _with("to", "example.org"), "to"),
    ("to empty", _with("to", []), "to"),
    ("two domains", _with("to", ["example.org", "example.net"]), "to"),
    ("to holds a number", _with("to", [1]), "to[0]"),
    ("missing payload", _with("payload", _DELETE), "payload"),
    ("payload a list", _with("payload", []), "payload"),
    ("unknown top-level key", {**message(), "extra": 1}, "extra"),
    ("unknown payload key", _with("payload.fullName", "Juliet"), "payload.fullName"),
    ("password a number", _with("payload.password", 12345678), "payload.password"),
    ("password missing", _with("payload.password", _DELETE), "payload.password"),
    ("password null", _with("payload.password", None), "payload.password"),
    ("username a list", _with("payload.username", ["juliet"]), "payload.username"),
    ("loginOnSuccess a string", _with("payload.loginOnSuccess", "yes"), "payload.loginOnSuccess"),
    ("loginOnSuccess a number", _with("payload.loginOnSuccess", 1), "payload.loginOnSuccess"),
    ("thirdPIDs an object", _with("payload.thirdPIDs", {"type": "email"}), "payload.thirdPIDs"),
    (
        "thirdPID unknown type",
        _with("payload.thirdPIDs", [{"type": "xmpp", "value": "j@x.org"}]),
        "payload.thirdPIDs[0].type",
    ),
    (
        "thirdPID value a number",
        _with("payload.thirdPIDs", [{"type": "msisdn", "value": 1234567890}]),
        "payload.thirdPIDs[0].value",
    ),
    (
        "thirdPID extra key",
        _with("payload.thirdPIDs", [{"type": "email", "value": "a@b.org", "ok": True}]),
        "payload.thirdPIDs[0].ok",
    ),
    (
        "invalid email",
        _with("payload.thirdPIDs", [{"type": "email", "value": "no-at"}]),
        "payload.thirdPIDs",
    ),
    (
        "invalid msisdn",
        _with("payload.thirdPIDs", [{"type": "msisdn", "value": "12345"}]),
        "payload.thirdPIDs",
    ),
    (
        "the same email twice",
        _with(
            "payload.thirdPIDs",
            [{"type": "email", "value": "a@b.org"}, {"type": "email", "value": "A@b.org"}],
        ),
        "payload.thirdPIDs",
    ),
    ("no username and no thirdPIDs", message(username=None, thirdPIDs=[]), "payload.username"),
    ("reserved username", _with("payload.username", "post-master"), "payload.username"),
    ("username with a space", _with("payload.username", "ju liet"), "payload.username"),
    ("username too long", _with("payload.username", "j" * 65), "payload.username"),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [pytest.param(body, field, id=name) for name, body, field in MALFORMED_BODIES],
)
def test_register_answers_bad_request_400_naming_the_field(
    client: Client, provider: Provider, body: Any, field: str
) -> None:
    response = post(client, body)
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.content
    answer = response.json()
    assert answer["ok"] is False
    assert answer["type"] == cpe3.REGISTER
    assert answer["payload"]["errID"] == cpe3.BAD_REQUEST
    assert field in answer["payload"]["fields"], answer["payload"]["fields"]
    assert not MailAccount.objects.exists()


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_register_answers_bad_request_400_to_other_content_types(
    client: Client, provider: Provider, content_type: str
) -> None:
    response = post(client, json.dumps(message()), content_type=content_type)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["payload"]["fields"] == {"Content-Type": "Send application/json."}
    assert not MailAccount.objects.exists()


def test_register_accepts_json_with_a_charset(client: Client, provider: Provider) -> None:
    response = post(client, message(), content_type="application/json; charset=utf-8")
    assert response.status_code == HTTPStatus.CREATED


def test_register_answers_bad_request_400_to_a_body_over_the_cap(
    client: Client, provider: Provider, settings: Any
) -> None:
    body = message(username="j" * 20_000)
    response = post(client, body)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "16384 bytes" in response.json()["payload"]["fields"]["body"]


def test_register_answers_bad_request_without_content_length(
    client: Client, provider: Provider
) -> None:
    # No Content-Length: nothing is read (WSGI gives no body), so it is an empty request.
    raw = json.dumps(message()).encode()
    response = client.generic("POST", URL, raw, content_type="application/json", CONTENT_LENGTH="")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(response) == cpe3.BAD_REQUEST


def test_register_echoes_a_string_id_even_when_refusing(client: Client, provider: Provider) -> None:
    body = _with("type", "urn:cadmium:nope")
    response = post(client, body)
    assert response.json()["id"] == body["id"]
    assert post(client, b"[]").json()["id"] is None


def test_register_answers_405_envelope_to_get(client: Client, provider: Provider) -> None:
    response = client.get(URL)
    assert response.status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert err_id(response) == cpe3.BAD_REQUEST


# ----- rate limit (check 10) -----------------------------------------------------------------


def test_register_answers_429_with_retry_after_past_the_limit_and_other_ips_are_unaffected(
    client: Client, provider: Provider, settings: Any, fresh_ip: str
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.REGISTRATION_RATE = "3/h"
    statuses = [
        post(client, message(username=f"user{n}", thirdPIDs=[]), REMOTE_ADDR=fresh_ip).status_code
        for n in range(3)
    ]
    assert statuses == [HTTPStatus.CREATED] * 3
    body = message(username="user9", thirdPIDs=[])
    limited = post(client, body, REMOTE_ADDR=fresh_ip)
    assert limited.status_code == HTTPStatus.TOO_MANY_REQUESTS
    retry_after = int(limited["Retry-After"])
    assert 0 < retry_after <= 3600
    answer = limited.json()
    assert answer["id"] == body["id"]
    assert answer["payload"]["errID"] == "urn:cadmium:ratelimit"
    assert answer["payload"]["retryAfter"] == retry_after
    # The same /64 is the same client; another address is not.
    same_64 = fresh_ip.replace("::1", "::2")
    assert post(client, message(username="user8"), REMOTE_ADDR=same_64).status_code == 429
    other_answer = post(client, message(username="user7", thirdPIDs=[]), REMOTE_ADDR=new_ip())
    assert other_answer.status_code == HTTPStatus.CREATED
    assert MailAccount.objects.count() == 4


def test_register_rate_limit_counts_forwarded_for_only_from_trusted_proxies(
    client: Client, provider: Provider, settings: Any, fresh_ip: str
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.REGISTRATION_RATE = "1/h"
    assert post(client, message(), REMOTE_ADDR=fresh_ip).status_code == HTTPStatus.CREATED
    forged = post(
        client,
        message(username="romeo", thirdPIDs=[]),
        REMOTE_ADDR=fresh_ip,
        HTTP_X_FORWARDED_FOR="203.0.113.9",
    )
    assert forged.status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_register_retry_after_is_the_end_of_the_fixed_window(
    client: Client, provider: Provider, settings: Any, fresh_ip: str
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.REGISTRATION_RATE = "1/m"
    post(client, message(), REMOTE_ADDR=fresh_ip)
    before = int(time.time())
    limited = post(client, message(username="romeo", thirdPIDs=[]), REMOTE_ADDR=fresh_ip)
    after = int(time.time())
    assert limited.status_code == HTTPStatus.TOO_MANY_REQUESTS
    # django-ratelimit's window ends at a multiple of the period plus crc32(key) % period;
    # the key is the /64 network address.
    key = str(ipaddress.ip_network(f"{fresh_ip}/64", strict=False).network_address)
    offset = zlib.crc32(key.encode()) % 60
    expected = {
        max(1, (now - now % 60 + offset + (60 if now - now % 60 + offset < now else 0)) - now)
        for now in (before, after)
    }
    assert int(limited["Retry-After"]) in expected


def test_register_fails_closed_with_503_when_the_cache_is_down(
    client: Client, provider: Provider, settings: Any, cache_down: None
) -> None:
    settings.RATELIMIT_ENABLE = True
    response = post(client, message())
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert err_id(response) == cpe3.UNAVAILABLE
    assert int(response["Retry-After"]) > 0
    assert not MailAccount.objects.exists()


# ----- database down (check 6) -------------------------------------------------------------


def test_register_answers_503_when_the_database_is_down_and_succeeds_after(
    client: Client,
    make_provider: Callable[..., Provider],
    database_down: Callable[[], None],
    settings: Any,
) -> None:
    make_provider()
    saved = dict(connection.settings_dict)
    body = message()
    database_down()
    response = post(client, body)
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert err_id(response) == cpe3.UNAVAILABLE
    assert response.json()["id"] == body["id"]
    connection.close()
    connection.settings_dict.update(saved)
    retry = post(client, body)
    assert retry.status_code == HTTPStatus.CREATED
    assert MailAccount.objects.count() == 1


# ----- idempotency (check 3) ----------------------------------------------------------------


def test_register_replays_the_first_answer_to_the_same_id_and_body(
    client: Client, provider: Provider
) -> None:
    body = message()
    first = post(client, body)
    second = post(client, body)
    assert first.status_code == second.status_code == HTTPStatus.CREATED
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert MailAccount.objects.count() == 1
    assert PASSWORD not in second.content.decode()


def test_register_replays_a_refusal_too(client: Client, provider: Provider) -> None:
    post(client, message())
    body = message(thirdPIDs=[])
    first = post(client, body)
    MailAccount.objects.all().delete()
    second = post(client, body)
    assert first.status_code == second.status_code == HTTPStatus.CONFLICT
    assert second.json() == first.json()
    assert not MailAccount.objects.exists()


def test_register_answers_422_to_the_same_id_with_another_body(
    client: Client, provider: Provider
) -> None:
    body = message()
    assert post(client, body).status_code == HTTPStatus.CREATED
    other = json.loads(json.dumps(body))
    other["payload"]["password"] = "another-password-77"
    response = post(client, other)
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert err_id(response) == cpe3.IDEMPOTENCY_MISMATCH
    assert MailAccount.objects.count() == 1


def test_register_idempotency_key_header_wins_over_the_id(
    client: Client, provider: Provider
) -> None:
    first = message(username="juliet", thirdPIDs=[])
    second = message(username="romeo", thirdPIDs=[])
    second["id"] = first["id"]
    assert post(client, first, HTTP_IDEMPOTENCY_KEY="key-1").status_code == HTTPStatus.CREATED
    assert post(client, second, HTTP_IDEMPOTENCY_KEY="key-2").status_code == HTTPStatus.CREATED
    replay = post(client, first, HTTP_IDEMPOTENCY_KEY="key-1")
    assert replay["Idempotent-Replayed"] == "true"
    mismatch = post(client, second, HTTP_IDEMPOTENCY_KEY="key-1")
    assert mismatch.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert MailAccount.objects.count() == 2


def test_register_answers_bad_request_to_an_unusable_idempotency_key(
    client: Client, provider: Provider
) -> None:
    response = post(client, message(), HTTP_IDEMPOTENCY_KEY="k" * 201)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "Idempotency-Key" in response.json()["payload"]["fields"]


def test_register_runs_again_after_24_hours(client: Client, provider: Provider) -> None:
    body = message(thirdPIDs=[])
    post(client, body)
    RegistrationRequest.objects.update(created_at=timezone.now() - timedelta(hours=25))
    MailAccount.objects.all().delete()
    response = post(client, body)
    assert response.status_code == HTTPStatus.CREATED
    assert "Idempotent-Replayed" not in response
    assert MailAccount.objects.count() == 1


@pytest.fixture
def command_backend(settings: Any, tmp_path: Any) -> Iterator[Callable[[str], None]]:
    """Switch to the `command` mailbox backend running a small Python program."""

    def use(program: str) -> None:
        script = tmp_path / "mailbox.py"
        script.write_text(program, encoding="utf-8")
        settings.MAILBOX_BACKEND = "command"
        settings.MAILBOX_COMMAND = f"{sys.executable} {script}"
        load_backend.cache_clear()

    yield use
    load_backend.cache_clear()


def test_register_after_a_5xx_forgets_the_key_so_a_retry_runs(
    client: Client, provider: Provider, command_backend: Callable[[str], None], settings: Any
) -> None:
    command_backend("import sys\nsys.stdin.read()\nsys.exit(1)\n")
    body = message()
    failed = post(client, body)
    assert failed.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert err_id(failed) == cpe3.UNAVAILABLE
    assert not RegistrationRequest.objects.exists()
    command_backend("import sys\nsys.stdin.read()\n")
    assert post(client, body).status_code == HTTPStatus.CREATED
    assert MailAccount.objects.count() == 1


def test_register_answers_409_in_progress_to_a_retry_while_the_first_runs(
    live_server: Any, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    # The first request is held in flight after its commit, while its mail is delivered
    # (the SMTP server waits), so no database lock serialises the second one.
    smtp_inbox.hold()
    body = message()
    url = live_server.url + URL
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(http_post_json, url, body)
        assert smtp_inbox.arrived.wait(30)
        status, answer = http_post_json(url, body)
        smtp_inbox.release.set()
        assert status == HTTPStatus.CONFLICT
        assert answer["payload"]["errID"] == cpe3.IN_PROGRESS
        assert first.result()[0] == HTTPStatus.ACCEPTED
    status, answer = http_post_json(url, body)
    assert status == HTTPStatus.ACCEPTED
    assert MailAccount.objects.count() == 1
    assert len(smtp_inbox.messages) == 1


# ----- the race (check 1) ---------------------------------------------------------------------


def test_twenty_concurrent_registrations_of_one_address_create_exactly_one(
    live_server: Any, make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    url = live_server.url + URL
    bodies = [message(thirdPIDs=[]) for _ in range(20)]  # distinct ids: 20 separate requests
    barrier = threading.Barrier(20)

    def send(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        barrier.wait()
        return http_post_json(url, body)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(send, bodies))
    statuses = sorted(status for status, _ in results)
    assert statuses == [HTTPStatus.CREATED] + [HTTPStatus.CONFLICT] * 19
    assert all(
        answer["payload"]["errID"] == cpe3.ID_EXISTS
        for status, answer in results
        if status == HTTPStatus.CONFLICT
    )
    assert MailAccount.objects.filter(local_part="juliet").count() == 1


# ----- secrets (check 9) ----------------------------------------------------------------------


def _forms(secret: str) -> list[str]:
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode(),
    ]


def _database_text() -> str:
    parts = []
    for model in apps.get_models():
        parts.extend(repr(row) for row in model._default_manager.values())
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(include_views=True):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            parts.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(parts)


def _pg_dump() -> str | None:
    if connection.vendor != "postgresql" or shutil.which("pg_dump") is None:
        return None
    params = connection.settings_dict
    env = {**os.environ, "PGPASSWORD": params["PASSWORD"] or ""}
    command = [
        "pg_dump", "--data-only",
        "-h", params["HOST"] or "127.0.0.1", "-p", str(params["PORT"] or 5432),
        "-U", params["USER"] or "postgres", params["NAME"],
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, check=True, timeout=60
    )
    return result.stdout


def test_the_plaintext_password_is_stored_and_logged_nowhere(
    client: Client,
    make_provider: Callable[..., Provider],
    transactional_db: None,
    caplog: pytest.LogCaptureFixture,
    command_backend: Callable[[str], None],
) -> None:
    make_provider()
    caplog.set_level(logging.DEBUG)
    canary = f'Canary-{secrets.token_hex(8)}-é"/+x'
    body = message(password=canary, loginOnSuccess=True)
    assert post(client, body).status_code == HTTPStatus.CREATED
    assert post(client, body).status_code == HTTPStatus.CREATED  # replayed
    taken = message(password=canary, thirdPIDs=[])
    assert post(client, taken).status_code == HTTPStatus.CONFLICT
    other_body = json.loads(json.dumps(body))
    other_body["payload"]["password"] = canary + "2"
    assert post(client, other_body).status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert post(client, json.dumps(body)[:-3]).status_code == HTTPStatus.BAD_REQUEST
    # A mailbox program that echoes the password in its error does not leak it either.
    command_backend(
        "import sys, json\n"
        "print(json.load(sys.stdin).get('password'), file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    assert post(client, message(username="romeo", thirdPIDs=[], password=canary)).status_code == 503
    assert RegistrationRequest.objects.exists()
    dumps = [_database_text(), caplog.text]
    pg_dump = _pg_dump()
    if pg_dump is not None:
        assert "registrationrequest" in pg_dump.lower()
        dumps.append(pg_dump)
    for dump in dumps:
        for form in _forms(canary):
            assert form not in dump
    assert "juliet@example.org" in _database_text()  # the scan does see the data


def test_register_logs_one_line_per_outcome_without_the_body(
    client: Client, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="accounts.api")
    body = message(username="ju\nliet")
    post(client, body)
    post(client, message())
    lines = [r.getMessage() for r in caplog.records if r.name == "accounts.api"]
    assert len(lines) == 2
    assert "outcome=urn:cadmium:profile:register:bad_request status=400" in lines[0]
    assert "outcome=created status=201" in lines[1]
    assert all("\n" not in line and PASSWORD not in line for line in lines)


# ----- email verification --------------------------------------------------------------------


class _Inbox:
    """aiosmtpd handler keeping every message; hold() makes it wait before answering."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.release.clear()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)  # type: ignore[arg-type]
        self.arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return "250 OK"

    def code(self) -> str:
        assert len(self.messages) == 1
        body = self.messages[0].get_body(preferencelist=("plain",))
        assert body is not None
        found = re.search(r"\b(\d{6})\b", body.get_content())
        assert found is not None
        return found.group(1)


@pytest.fixture
def smtp_inbox(settings: Any, free_port: int) -> Iterator[_Inbox]:
    """A real SMTP server (aiosmtpd) on a free port, and Django's smtp backend pointed at it."""
    inbox = _Inbox()
    port = free_port
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    # aiosmtpd logs each connection at INFO from its own thread, which can outlive pytest's
    # capture of stderr ("I/O operation on closed file"); its warnings still show.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield inbox
    controller.stop()


@pytest.fixture
def verifying_provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider(require_verified_email=True)


def verify_message(code: str, **payload: Any) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(8),
        "type": cpe3.VERIFY,
        "to": ["example.org"],
        "payload": {"userID": "@juliet@example.org", "code": code, **payload},
    }


def test_register_with_verification_answers_202_pending_and_mails_a_code(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    body = message()
    response = post(client, body)
    assert response.status_code == HTTPStatus.ACCEPTED
    assert response.json()["payload"] == {
        "userID": "@juliet@example.org",
        "verification": "pending",
    }
    account = MailAccount.objects.get()
    assert account.status == AccountStatus.PENDING
    mail = smtp_inbox.messages[0]
    assert mail["To"] == "juliet@capulet.example"
    assert mail.get_body(preferencelist=("html",)) is not None
    code = smtp_inbox.code()
    assert code in mail["Subject"]
    stored = VerificationCode.objects.get()
    assert code not in repr(VerificationCode.objects.values().get())
    assert stored.attempts == 0
    assert timedelta(minutes=14) < stored.expires_at - timezone.now() <= timedelta(minutes=15)
    # A retry replays the 202 and sends nothing new.
    assert post(client, body).status_code == HTTPStatus.ACCEPTED
    assert len(smtp_inbox.messages) == 1


def test_verify_activates_the_account_with_the_mailed_code(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    post(client, message())
    code = smtp_inbox.code()
    wrong = "000000" if code != "000000" else "111111"
    refused = post(client, verify_message(wrong), url=VERIFY_URL)
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(refused) == cpe3.VERIFICATION_FAILED
    assert MailAccount.objects.get().status == AccountStatus.PENDING
    body = verify_message(code)
    response = post(client, body, url=VERIFY_URL)
    assert response.status_code == HTTPStatus.OK
    assert response.json() == {
        "id": body["id"],
        "type": cpe3.VERIFY,
        "from": "example.org",
        "ok": True,
        "payload": {"userID": "@juliet@example.org", "verification": "done"},
    }
    assert MailAccount.objects.get().status == AccountStatus.ACTIVE
    assert ThirdPartyID.objects.get(kind="email").verified_at is not None
    assert not VerificationCode.objects.exists()
    again = post(client, verify_message(code), url=VERIFY_URL)
    assert again.status_code == HTTPStatus.BAD_REQUEST


def test_verify_by_email_after_a_registration_without_username(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    answer = post(client, message(username=None)).json()
    assert answer["payload"]["userID"] == "juliet@capulet.example"
    code = smtp_inbox.code()
    by_user_id = verify_message(code)
    by_user_id["payload"]["userID"] = answer["payload"]["userID"]
    assert post(client, by_user_id, url=VERIFY_URL).status_code == HTTPStatus.OK


def test_verify_by_the_email_field(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    post(client, message())
    body = verify_message(smtp_inbox.code())
    body["payload"] = {"email": "JULIET@capulet.example", "code": body["payload"]["code"]}
    assert post(client, body, url=VERIFY_URL).status_code == HTTPStatus.OK


def test_verify_refuses_the_right_code_after_five_wrong_ones(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    post(client, message())
    code = smtp_inbox.code()
    wrong = "000000" if code != "000000" else "111111"
    statuses = [post(client, verify_message(wrong), url=VERIFY_URL).status_code for _ in range(5)]
    assert statuses == [HTTPStatus.BAD_REQUEST] * 5
    response = post(client, verify_message(code), url=VERIFY_URL)
    assert response.status_code == HTTPStatus.GONE
    assert err_id(response) == cpe3.VERIFICATION_EXPIRED
    assert MailAccount.objects.get().status == AccountStatus.PENDING


def test_verify_refuses_an_expired_code(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    post(client, message())
    VerificationCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post(client, verify_message(smtp_inbox.code()), url=VERIFY_URL)
    assert response.status_code == HTTPStatus.GONE
    assert MailAccount.objects.get().status == AccountStatus.PENDING


@pytest.mark.parametrize(
    "payload",
    [
        {"code": "123456"},
        {"userID": "@juliet@example.org", "email": "juliet@capulet.example", "code": "123456"},
        {"userID": "@juliet@example.org", "code": 123456},
        {"userID": "@juliet@example.org", "code": "12345"},
        {"userID": "@juliet@example.org", "code": "123456", "extra": True},
    ],
)
def test_verify_answers_bad_request_to_malformed_payloads(
    client: Client, verifying_provider: Provider, payload: dict[str, Any]
) -> None:
    body = verify_message("000000")
    body["payload"] = payload
    response = post(client, body, url=VERIFY_URL)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(response) == cpe3.BAD_REQUEST
    assert response.json()["type"] == cpe3.VERIFY


def test_verify_answers_the_same_to_an_unknown_user_as_to_a_wrong_code(
    client: Client, verifying_provider: Provider
) -> None:
    body = verify_message("123456")
    body["payload"]["userID"] = "@nobody@example.org"
    response = post(client, body, url=VERIFY_URL)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert err_id(response) == cpe3.VERIFICATION_FAILED


def test_register_with_verification_needs_an_email(
    client: Client, verifying_provider: Provider, smtp_inbox: _Inbox
) -> None:
    response = post(client, message(thirdPIDs=[{"type": "msisdn", "value": "+1234567890"}]))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "payload.thirdPIDs" in response.json()["payload"]["fields"]
    assert not MailAccount.objects.exists()
    assert smtp_inbox.messages == []


def test_register_with_verification_answers_503_and_keeps_nothing_when_mail_is_down(
    client: Client, verifying_provider: Provider, settings: Any, free_port: int
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = free_port
    settings.EMAIL_TIMEOUT = 2
    response = post(client, message())
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert err_id(response) == cpe3.UNAVAILABLE
    assert not MailAccount.objects.exists()
    assert not RegistrationRequest.objects.exists()


# ----- schema -------------------------------------------------------------------------------


def test_schema_describes_both_endpoints(client: Client, db: None) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").content
    text = schema.decode()
    assert "/api/v1/register" in text
    assert "/api/v1/register/verify" in text
    assert "RegisterErrorOut" in text


def test_builtin_reserved_names_cannot_be_registered(client: Client, provider: Provider) -> None:
    for name in sorted(BUILTIN_RESERVED)[:5]:
        response = post(client, message(username=name, thirdPIDs=[]))
        assert response.status_code == HTTPStatus.BAD_REQUEST
        assert "payload.username" in response.json()["payload"]["fields"]


# ----- administrator approval (check 4) -----------------------------------------------------


def test_register_where_approval_is_required_answers_202_awaiting_approval(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(require_approval=True)

    response = post(client, message())

    assert response.status_code == HTTPStatus.ACCEPTED
    assert response.json()["payload"] == {"userID": "@juliet@example.org", "approval": "pending"}
    assert MailAccount.objects.get().status == AccountStatus.APPROVAL
    assert not MailAccount.objects.active().exists()


def test_verified_email_then_awaits_approval_where_both_are_required(
    client: Client, make_provider: Callable[..., Provider], smtp_inbox: _Inbox
) -> None:
    make_provider(require_verified_email=True, require_approval=True)
    first = post(client, message())
    assert first.json()["payload"]["verification"] == "pending"

    response = post(client, verify_message(smtp_inbox.code()), url=VERIFY_URL)

    assert response.status_code == HTTPStatus.OK
    assert response.json()["payload"]["approval"] == "pending"
    assert MailAccount.objects.get().status == AccountStatus.APPROVAL
