"""Field rules of providers, domains, servers and suggestion clients (providers/models.py)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from providers.models import Provider, SuggestionClient

pytestmark = pytest.mark.django_db  # full_clean checks uniqueness in the database


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("2001:0db8:0000:0000:0000:0000:0000:0000/128", "2001:db8::/128"),
        ("192.0.2.10", "192.0.2.10/32"),
        (" 10.0.0.0/8 ", "10.0.0.0/8"),
    ],
)
def test_suggestion_client_network_is_stored_in_shortest_form(typed: str, stored: str) -> None:
    client = SuggestionClient(network=typed)
    client.full_clean()

    assert client.network == stored


def test_suggestion_client_network_with_host_bits_suggests_the_network() -> None:
    with pytest.raises(ValidationError, match=r"did you mean 10\.0\.0\.0/24"):
        SuggestionClient(network="10.0.0.10/24").full_clean()


def test_suggestion_client_refuses_a_host_name() -> None:
    with pytest.raises(ValidationError, match="not an IP address or network"):
        SuggestionClient(network="proxy.example").full_clean()


def test_provider_normalises_languages_and_countries() -> None:
    provider = Provider(
        slug="p", name="P", short_name="P", languages="en, de-AT", countries="de, at"
    )
    provider.full_clean()

    assert (provider.languages, provider.countries) == ("en,de-AT", "DE,AT")


def test_hosted_provider_needs_servers_and_remote_only_domains() -> None:
    assert Provider(hosted=True).required_parts() == ("domains", "incoming", "outgoing")
    assert Provider(hosted=False).required_parts() == ("domains",)


def test_remote_provider_needs_its_urls_with_known_placeholders() -> None:
    provider = Provider(
        slug="r",
        name="R",
        short_name="R",
        hosted=False,
        registration_url="https://r.example/signup?mail={mail}",
    )

    with pytest.raises(ValidationError) as error:
        provider.full_clean()

    assert "Unknown placeholder {mail}" in str(error.value.message_dict["registration_url"])
    assert "suggestion API" in str(error.value.message_dict["suggestion_url"])
