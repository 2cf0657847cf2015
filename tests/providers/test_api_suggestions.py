"""GET /api/v1/suggestions: the answer format, input errors and the per-client rate limit.

RELIABILITY.md checks 10 (exact quota, 429 + Retry-After, concurrency, window reset),
11 (forged forwarding headers, the trusted proxy, IPv6 /64) and the fail-closed rule of 7.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client

from providers.models import (
    SUGGESTION_RATE_CACHE_KEY,
    Provider,
    SuggestionSettings,
    SuggestionStat,
)

URL = "/api/v1/suggestions"
QUERY = {"first_name": "Juliet", "last_name": "Capulet", "version": "2"}


@pytest.fixture(autouse=True)
def _defaults(settings: Any) -> Iterator[None]:
    settings.RATELIMIT_ENABLE = False  # tests about limits switch it on with fresh addresses
    settings.SUGGESTION_CACHE_SECONDS = 0
    settings.CELERY_TASK_ALWAYS_EAGER = True  # no remote providers here, or threads
    # The rate in force is cached (30 s); tests change it through settings or the row.
    cache.delete(SUGGESTION_RATE_CACHE_KEY)
    yield
    with contextlib.suppress(Exception):  # a test may have pointed the cache at nothing
        cache.delete(SUGGESTION_RATE_CACHE_KEY)


def new_ip() -> str:
    """An IPv6 client (its own /64) that no earlier run counted: Redis keeps counters."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


def new_ipv4() -> str:
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def get(client: Client, ip: str, **params: str) -> Any:
    return client.get(URL, {**QUERY, **params}, REMOTE_ADDR=ip)


# ----- the answer -----------------------------------------------------------------------------


def test_suggestions_answer_the_provisioner_array(client: Client, hosted: Provider) -> None:
    response = get(client, new_ip())

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    assert response.json() == [
        {
            "provider": "hosted.example",
            "succeeded": True,
            "addresses": [
                "juliet.capulet@hosted.example",
                "julietcapulet@hosted.example",
                "j.capulet@hosted.example",
                "juliet.c@hosted.example",
                "juliet_capulet@hosted.example",
            ],
            "price": 0,
        }
    ]
    assert "X-Suggestions-Partial" not in response


def test_suggestions_mark_a_partial_answer(
    client: Client,
    hosted: Provider,
    make_remote_provider: Callable[..., Provider],
    free_port: int,
) -> None:
    make_remote_provider(f"http://127.0.0.1:{free_port}/", domain="down.example")

    response = get(client, new_ip())

    assert response.status_code == HTTPStatus.OK
    assert response["X-Suggestions-Partial"] == "1"
    assert {(e["provider"], e["succeeded"]) for e in response.json()} == {
        ("hosted.example", True),
        ("down.example", False),
    }


def test_suggestions_with_debug_show_status_on_successes(client: Client, hosted: Provider) -> None:
    entry = get(client, new_ip(), debug="1").json()[0]

    assert entry["status"] == "ok"
    assert isinstance(entry["latency_ms"], int)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"first_name": "", "last_name": ""}, "name_missing"),
        ({"first_name": "x" * 500}, "name_too_long"),
        ({"country": "Germany"}, "invalid_country"),
        ({"first_name": "Juli\x00et"}, "invalid"),
        ({"debug": "maybe"}, "invalid"),
        ({"providers": ",".join(f"p{n}.example" for n in range(51))}, "too_many_providers"),
    ],
)
def test_suggestions_refuse_bad_input_with_400_and_a_code(
    client: Client, hosted: Provider, params: dict[str, str], code: str
) -> None:
    response = get(client, new_ip(), **params)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["code"] == code
    assert response.json()["message"]
    assert not SuggestionStat.objects.exists()  # no provider was asked


@pytest.mark.parametrize(
    "name",
    [
        ("José", "Müller"),
        ("Zoë", "O'Brien"),
        ("Владимир", "Петров"),
        ("李", "小龍"),
        ("Zoë", ""),
        ("محمد\u200cرضا", "رضایی"),  # noqa: RUF001 (Persian, a zero-width non-joiner inside)
        ("Jean\u00a0Pierre", "Dupont"),  # a no-break space
    ],
)
def test_suggestions_for_names_in_any_script_are_valid(
    client: Client, hosted: Provider, name: tuple[str, str]
) -> None:
    response = get(client, new_ip(), first_name=name[0], last_name=name[1])

    assert response.status_code == HTTPStatus.OK
    addresses = response.json()[0]["addresses"]
    assert len(addresses) == 5
    assert all(a.isascii() and a.endswith("@hosted.example") for a in addresses)


# ----- rate limit -----------------------------------------------------------------------------


def test_suggestions_answer_429_with_retry_after_over_limit_and_other_ips_are_unaffected(
    client: Client, hosted: Provider, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    with django_capture_on_commit_callbacks(execute=True):
        SuggestionSettings.objects.create(rate_count=5, rate_minutes=1)  # as an admin would
    ip = new_ipv4()

    statuses = [get(client, ip).status_code for _ in range(5)]
    limited = get(client, ip)
    other = get(client, new_ipv4())

    assert statuses == [HTTPStatus.OK] * 5
    assert limited.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 0 < int(limited["Retry-After"]) <= 60
    assert limited.json()["code"] == "rate_limited"
    assert other.status_code == HTTPStatus.OK


def test_suggestions_rate_follows_an_admin_change_at_once(
    client: Client, hosted: Provider, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    ip = new_ipv4()
    assert get(client, ip).status_code == HTTPStatus.OK  # the default (30/m) is cached now
    with django_capture_on_commit_callbacks(execute=True):
        SuggestionSettings.objects.create(rate_count=1, rate_minutes=60)

    assert get(client, ip).status_code == HTTPStatus.OK  # a new rate starts a new count
    assert get(client, ip).status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_suggestions_share_a_bucket_within_an_ipv6_64(
    client: Client, hosted: Provider, settings: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.SUGGESTION_RATE = "2/m"
    network = ipaddress.ip_network(f"{new_ip()}/64", strict=False)
    one, two = str(network.network_address + 1), str(network.network_address + 2)

    assert get(client, one).status_code == HTTPStatus.OK
    assert get(client, two).status_code == HTTPStatus.OK
    assert get(client, one).status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert get(client, two).status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_suggestions_forged_forwarding_headers_get_no_extra_quota(
    client: Client, hosted: Provider, settings: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.SUGGESTION_RATE = "30/h"
    peer = new_ipv4()

    statuses = [
        client.get(
            URL,
            QUERY,
            REMOTE_ADDR=peer,
            HTTP_X_FORWARDED_FOR=new_ipv4(),
            HTTP_X_REAL_IP=new_ipv4(),
            HTTP_FORWARDED=f"for={new_ipv4()}",
        ).status_code
        for _ in range(100)
    ]

    assert statuses.count(HTTPStatus.OK) == 30
    assert statuses.count(HTTPStatus.TOO_MANY_REQUESTS) == 70


def test_suggestions_through_the_trusted_proxy_count_the_real_client(
    client: Client, hosted: Provider, settings: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.SUGGESTION_RATE = "1/h"
    settings.PORTAL_TRUSTED_PROXIES = [ipaddress.ip_network("10.9.0.0/16")]
    alice, bob = new_ipv4(), new_ipv4()

    def via_proxy(client_ip: str) -> int:
        status: int = client.get(
            URL, QUERY, REMOTE_ADDR="10.9.0.5", HTTP_X_FORWARDED_FOR=client_ip
        ).status_code
        return status

    assert via_proxy(alice) == HTTPStatus.OK
    assert via_proxy(bob) == HTTPStatus.OK  # the proxy's own address is not the key
    assert via_proxy(alice) == HTTPStatus.TOO_MANY_REQUESTS


def test_suggestions_fail_closed_with_503_when_the_cache_is_down(
    client: Client, hosted: Provider, settings: Any, cache_down: None
) -> None:
    settings.RATELIMIT_ENABLE = True

    started = time.monotonic()
    response = get(client, new_ipv4())
    elapsed = time.monotonic() - started

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["code"] == "ratelimit_unavailable"
    assert elapsed < 3.0, elapsed  # a refused connection is known at once, not after retries
    assert int(response["Retry-After"]) > 0
    assert not SuggestionStat.objects.exists()


# ----- check 10: exact quota with the clock frozen inside one window ---------------------------


@pytest.mark.django_db(transaction=True)
def test_suggestions_allow_exactly_the_quota_sequentially_then_concurrently(
    live_server: Any, make_provider: Callable[..., Provider], settings: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.SUGGESTION_RATE = "30/m"
    make_provider(
        domains=("hosted.example",),
        tos_url="https://hosted.example/tos",
        privacy_url="https://hosted.example/privacy",
    )
    # Live-server requests come from 127.0.0.1; a trusted "proxy" there names the client, so
    # each part of the test is a client of its own (fresh in Redis, which keeps counters).
    settings.PORTAL_TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    query = "&".join(f"{k}={v}" for k, v in QUERY.items())

    def burst(client_ip: str, concurrent: bool) -> list[tuple[int, str | None]]:
        def one(_: int) -> tuple[int, str | None]:
            request = urllib.request.Request(  # noqa: S310
                f"{live_server.url}{URL}?{query}", headers={"X-Forwarded-For": client_ip}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                    return answer.status, None
            except urllib.error.HTTPError as refused:
                return refused.code, refused.headers.get("Retry-After")

        if not concurrent:
            return [one(n) for n in range(100)]
        start = threading.Barrier(100)

        def together(n: int) -> tuple[int, str | None]:
            start.wait()
            return one(n)

        with ThreadPoolExecutor(100) as pool:
            return list(pool.map(together, range(100)))

    frozen = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
    sequential_ip, concurrent_ip = new_ipv4(), new_ipv4()
    with time_machine.travel(frozen, tick=False):
        sequential = burst(sequential_ip, concurrent=False)
        concurrent = burst(concurrent_ip, concurrent=True)
    with time_machine.travel(frozen + timedelta(seconds=61), tick=False):
        after_reset = burst(sequential_ip, concurrent=False)[:1]

    for results in (sequential, concurrent):
        statuses = [status for status, _ in results]
        assert statuses.count(HTTPStatus.OK) == 30, statuses
        assert statuses.count(HTTPStatus.TOO_MANY_REQUESTS) == 70
        retry_afters = {int(value) for status, value in results if value is not None}
        assert retry_afters and all(0 < value <= 60 for value in retry_afters)
    assert [status for status, _ in sequential[:30]] == [HTTPStatus.OK] * 30
    assert after_reset[0][0] == HTTPStatus.OK


def test_suggestions_schema_documents_the_endpoints(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    assert "/api/v1/suggestions" in schema["paths"]
    assert "/api/v1/providers" in schema["paths"]
    assert "/providers/{slug}/suggest" in schema["paths"]
    parameters = {p["name"] for p in schema["paths"]["/api/v1/suggestions"]["get"]["parameters"]}
    assert {"first_name", "last_name", "country", "providers", "version"} <= parameters
    json.dumps(schema)  # serialisable as a whole
