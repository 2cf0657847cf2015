"""GET /providers/<slug>/suggest: this portal as a hosted provider's suggestion engine.

RELIABILITY.md check 12: only callers on the allow-list get an answer, by peer address
(never a header), networks as networks, and a token check that fails closed.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from django.test import Client

from accounts.services.accounts import create_account
from providers.models import Provider, SuggestionClient
from providers.services import suggestion_clients

URL = "/providers/example/suggest"
QUERY = {"first_name": "Juliet", "last_name": "Capulet", "country": "DE"}


@pytest.fixture
def make_offered(make_provider: Callable[..., Provider]) -> Callable[..., Provider]:
    """A hosted provider as the provider list offers it (else its engine declines)."""

    def make(domains: tuple[str, ...] = ("example.org",), **fields: Any) -> Provider:
        urls = {"tos_url": f"https://{domains[0]}/tos", "privacy_url": f"https://{domains[0]}/p"}
        return make_provider(domains=domains, **{**urls, **fields})

    return make


@pytest.fixture
def provider(make_offered: Callable[..., Provider]) -> Provider:
    return make_offered()


def allow(network: str, provider: Provider | None = None) -> SuggestionClient:
    row = SuggestionClient(network=network, provider=provider)
    row.full_clean()
    row.save()
    return row


def get(client: Client, ip: str, url: str = URL, **headers: Any) -> Any:
    return client.get(url, QUERY, REMOTE_ADDR=ip, **headers)


def test_allowed_caller_gets_one_suggestion_entry(client: Client, provider: Provider) -> None:
    allow("192.0.2.10")
    create_account(
        domain="example.org",
        local_part="juliet.capulet",
        password="nurse-and-friar-7",
        created_via="admin",
    )

    response = get(client, "192.0.2.10")

    assert response.status_code == HTTPStatus.OK
    assert response.json() == {
        "provider": "example.org",
        "succeeded": True,
        "addresses": [
            "julietcapulet@example.org",
            "j.capulet@example.org",
            "juliet.c@example.org",
            "juliet_capulet@example.org",
            "capulet.juliet@example.org",
        ],
        "price": 0,
    }
    assert "no-store" in response["Cache-Control"]


def test_caller_outside_the_allow_list_gets_403_over_a_real_socket(
    live_server: Any, make_offered: Callable[..., Provider]
) -> None:
    make_offered()
    allow("127.0.0.1")
    url = urlsplit(live_server.url)

    def ask(source: str, **headers: str) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection(
            url.hostname or "", url.port, timeout=10, source_address=(source, 0)
        )
        try:
            connection.request("GET", f"{URL}?{urlencode(QUERY)}", headers=headers)
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

    status, body = ask("127.0.0.2")
    spoofed, _ = ask("127.0.0.2", **{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
    allowed, entry = ask("127.0.0.1")

    assert status == HTTPStatus.FORBIDDEN
    assert body["code"] == "not_allowed"
    assert spoofed == HTTPStatus.FORBIDDEN
    assert allowed == HTTPStatus.OK
    assert entry["addresses"][0] == "juliet.capulet@example.org"


def test_an_address_entry_admits_that_address_only(client: Client, provider: Provider) -> None:
    allow("10.0.0.10")

    assert get(client, "10.0.0.10").status_code == HTTPStatus.OK
    assert get(client, "10.0.0.100").status_code == HTTPStatus.FORBIDDEN
    assert get(client, "10.0.0.1").status_code == HTTPStatus.FORBIDDEN


def test_network_entries_behave_as_networks(client: Client, provider: Provider) -> None:
    allow("198.51.100.0/25")
    allow("2001:db8:1::/48")

    assert get(client, "198.51.100.127").status_code == HTTPStatus.OK
    assert get(client, "198.51.100.128").status_code == HTTPStatus.FORBIDDEN
    assert get(client, "2001:db8:1:ffff::9").status_code == HTTPStatus.OK
    assert get(client, "2001:db8:2::9").status_code == HTTPStatus.FORBIDDEN
    assert get(client, "::ffff:198.51.100.7").status_code == HTTPStatus.OK  # IPv4-mapped peer


def test_an_entry_of_another_provider_does_not_admit(
    client: Client, provider: Provider, make_offered: Callable[..., Provider]
) -> None:
    other = make_offered(domains=("other.example",))
    allow("192.0.2.20", provider=other)
    allow("192.0.2.30", provider=provider)

    assert get(client, "192.0.2.20").status_code == HTTPStatus.FORBIDDEN
    assert get(client, "192.0.2.30").status_code == HTTPStatus.OK
    assert get(client, "192.0.2.20", "/providers/other/suggest").status_code == HTTPStatus.OK


def test_forwarded_for_counts_only_from_a_trusted_proxy(
    client: Client, provider: Provider, settings: Any
) -> None:
    allow("192.0.2.10")
    forged = get(client, "203.0.113.5", HTTP_X_FORWARDED_FOR="192.0.2.10")
    settings.PORTAL_TRUSTED_PROXIES = [ipaddress.ip_network("203.0.113.0/24")]
    proxied = get(client, "203.0.113.5", HTTP_X_FORWARDED_FOR="192.0.2.10")
    proxied_stranger = get(client, "203.0.113.5", HTTP_X_FORWARDED_FOR="192.0.2.11")

    assert forged.status_code == HTTPStatus.FORBIDDEN
    assert proxied.status_code == HTTPStatus.OK
    assert proxied_stranger.status_code == HTTPStatus.FORBIDDEN


def test_a_network_with_a_token_fails_closed_without_it(client: Client, provider: Provider) -> None:
    row = allow("192.0.2.10")
    [(_, token)] = suggestion_clients.issue_tokens(client_ids=[row.pk])
    row.refresh_from_db()

    missing = get(client, "192.0.2.10")
    wrong = get(client, "192.0.2.10", HTTP_AUTHORIZATION="Bearer not-the-token")
    basic = get(client, "192.0.2.10", HTTP_AUTHORIZATION=f"Basic {token}")
    right = get(client, "192.0.2.10", HTTP_AUTHORIZATION=f"Bearer {token}")
    elsewhere = get(client, "192.0.2.99", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert [r.status_code for r in (missing, wrong, basic, elsewhere)] == [403] * 4
    assert right.status_code == HTTPStatus.OK
    assert len(row.token_sha256) == 64 and token not in row.token_sha256


def test_unknown_disabled_or_remote_provider_is_404(
    client: Client, provider: Provider, make_remote_provider: Callable[..., Provider]
) -> None:
    allow("192.0.2.10")
    make_remote_provider("https://remote.example/s", domain="remote.example", slug="remote")
    provider.enabled = False
    provider.save()

    for url in (URL, "/providers/nothing/suggest", "/providers/remote/suggest"):
        response = get(client, "192.0.2.10", url)
        assert response.status_code == HTTPStatus.NOT_FOUND
        assert response.json()["code"] == "not_found"


def test_bad_names_are_a_400_for_allowed_callers(client: Client, provider: Provider) -> None:
    allow("192.0.2.10")

    response = client.get(URL, {"first_name": "x" * 500}, REMOTE_ADDR="192.0.2.10")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["code"] == "name_too_long"


def test_a_stranger_gets_403_whatever_the_slug_or_the_input(
    client: Client, provider: Provider, make_offered: Callable[..., Provider]
) -> None:
    # Allowed elsewhere: 192.0.2.10 for every hosted provider, 192.0.2.20 for "other" only.
    allow("192.0.2.10")
    allow("192.0.2.20", provider=make_offered(domains=("other.example",)))
    long_name = {"first_name": "x" * 500}
    asked = [
        ("192.0.2.99", URL, QUERY),  # a stranger, a good question
        ("192.0.2.99", "/providers/nothing/suggest", QUERY),  # an unknown slug
        ("192.0.2.99", URL, long_name),  # a name too long (400 for those allowed)
        ("192.0.2.99", URL, {"first_name": "a\x00b"}),  # refused by the serializer itself
        ("192.0.2.99", URL, {"country": "Germany"}),
        ("192.0.2.20", URL, QUERY),  # allowed for another provider only
        ("192.0.2.20", "/providers/nothing/suggest", long_name),
    ]

    answers = [client.get(url, params, REMOTE_ADDR=ip) for ip, url, params in asked]

    assert [a.status_code for a in answers] == [HTTPStatus.FORBIDDEN] * len(asked)
    assert {a.json()["code"] for a in answers} == {"not_allowed"}
    # The same bodies: nothing tells an unknown slug or a bad name from a good one.
    assert len({a.content for a in answers}) == 1
    allowed = client.get("/providers/nothing/suggest", QUERY, REMOTE_ADDR="192.0.2.10")
    assert allowed.status_code == HTTPStatus.NOT_FOUND


@pytest.mark.parametrize("registration", ["closed", "token"])
def test_a_provider_not_open_to_everyone_declines(
    client: Client, provider: Provider, registration: str
) -> None:
    allow("192.0.2.10")
    provider.registration = registration
    provider.save()

    response = get(client, "192.0.2.10")

    assert response.status_code == HTTPStatus.OK
    assert response.json()["succeeded"] is False
    assert response.json()["status"] == "declined"
    assert "addresses" not in response.json()
