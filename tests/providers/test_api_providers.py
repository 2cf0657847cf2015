"""GET /api/v1/providers: the provider list in the Thunderbird provisioner format."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client

from providers import provisioner
from providers.models import Provider

URL = "/api/v1/providers"


@pytest.fixture
def listed(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider(
        domains=("example.org", "example.net"),
        tos_url="https://example.org/tos",
        privacy_url="https://example.org/privacy",
        languages="en,de",
        countries="DE,AT",
    )


def test_provider_list_answers_every_required_field(
    client: Client, listed: Provider, make_remote_provider: Callable[..., Provider], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example"
    make_remote_provider("https://remote.example/suggest", domain="remote.example", price=12)

    response = client.get(URL)

    assert response.status_code == HTTPStatus.OK
    entries = {entry["id"]: entry for entry in response.json()}
    assert entries["example.org"] == {
        "id": "example.org",
        "label": "Example Mail",
        "paid": False,
        "languages": ["en", "de"],
        "api": "https://portal.example/register/example/"
        "?email={email}&first_name={firstname}&last_name={lastname}",
        "tos_url": "https://example.org/tos",
        "privacy_url": "https://example.org/privacy",
        "sells_domain": False,
        "countries": ["DE", "AT"],
    }
    assert entries["remote.example"]["api"] == "https://remote.example/signup?email={email}"
    assert entries["remote.example"]["paid"] is True
    for entry in entries.values():
        assert set(provisioner.REQUIRED_LIST_FIELDS) <= set(entry)


def test_provider_list_leaves_out_providers_thunderbird_would_skip_or_cannot_use(
    client: Client, listed: Provider, make_provider: Callable[..., Provider]
) -> None:
    complete = {"tos_url": "https://x.example/tos", "privacy_url": "https://x.example/p"}
    make_provider(domains=("off.example",), enabled=False, **complete)
    make_provider(domains=("closed.example",), registration="closed", **complete)
    make_provider(domains=("invite.example",), registration="token", **complete)
    make_provider(domains=("notos.example",), privacy_url="https://x.example/p")

    ids = [entry["id"] for entry in client.get(URL).json()]

    assert ids == ["example.org"]


def test_provider_list_answers_304_to_its_etag_and_a_new_etag_after_an_edit(
    client: Client, listed: Provider
) -> None:
    first = client.get(URL)
    etag = first["ETag"]

    again = client.get(URL, HTTP_IF_NONE_MATCH=etag)
    listed.name = "Renamed Mail"
    listed.save()
    changed = client.get(URL, HTTP_IF_NONE_MATCH=etag)

    assert "public" in first["Cache-Control"]
    assert again.status_code == HTTPStatus.NOT_MODIFIED
    assert again.content == b""
    assert changed.status_code == HTTPStatus.OK
    assert changed["ETag"] != etag
    assert changed.json()[0]["label"] == "Renamed Mail"


def test_provider_list_costs_two_queries_whatever_the_number_of_providers(
    client: Client, make_provider: Callable[..., Provider], django_assert_num_queries: Any
) -> None:
    for n in range(5):
        make_provider(
            domains=(f"p{n}.example",),
            tos_url="https://x.example/tos",
            privacy_url="https://x.example/p",
        )

    with django_assert_num_queries(2):
        response = client.get(URL)

    assert len(response.json()) == 5


def test_provider_list_offers_the_logo_as_icon(
    client: Client, listed: Provider, settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example"
    Provider.objects.filter(pk=listed.pk).update(logo=b"\x89PNG\r\n\x1a\n", logo_type="image/png")

    (entry,) = client.get(URL).json()

    assert entry["icon"] == "https://portal.example/register/example/logo"
    assert client.get("/register/example/logo").status_code == HTTPStatus.OK
