"""The provider list's service (providers.services.listing): what is offered, and its ETag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from providers.models import Provider
from providers.services import listing

URLS = {"tos_url": "https://example.org/tos", "privacy_url": "https://example.org/privacy"}


def test_provider_list_points_hosted_providers_at_this_portal_and_remote_ones_at_theirs(
    make_provider: Callable[..., Provider], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.net"
    make_provider(slug="demo", name="Demo Mail", **URLS)
    make_provider(
        domains=("remote.example",),
        hosted=False,
        name="Remote Mail",
        registration_url="https://remote.example/signup?email={email}",
        suggestion_url="https://remote.example/suggest",
        servers=(),
        **URLS,
    )

    entries = {entry["id"]: entry for entry in listing.provider_list().entries}

    assert entries["example.org"]["api"] == (
        "https://portal.example.net/register/demo/"
        "?email={email}&first_name={firstname}&last_name={lastname}"
    )
    assert entries["remote.example"]["api"] == "https://remote.example/signup?email={email}"
    assert [entry["label"] for entry in listing.provider_list().entries] == [
        "Demo Mail",
        "Remote Mail",
    ]


def test_provider_list_offers_only_what_clients_can_use(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider(domains=("open.example",), **URLS)
    make_provider(domains=("closed.example",), registration="closed", **URLS)
    make_provider(domains=("invite.example",), registration="token", **URLS)
    make_provider(domains=("off.example",), enabled=False, **URLS)
    make_provider(domains=("notos.example",), privacy_url="https://x.example/p")

    assert [entry["id"] for entry in listing.provider_list().entries] == ["open.example"]


def test_provider_list_etag_changes_exactly_when_an_entry_does(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(**URLS)
    first = listing.provider_list().etag
    provider.quota_mb = 2048  # not in the list: same entries, same tag
    provider.save()
    unchanged = listing.provider_list().etag
    provider.name = "Renamed Mail"
    provider.save()
    renamed = listing.provider_list().etag

    assert first == unchanged
    assert renamed != first
    assert first.startswith('"') and first.endswith('"')
