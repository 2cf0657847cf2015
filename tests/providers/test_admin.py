"""The provider console in Django admin: list, search, add with inlines, validation, preview."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest

from providers.models import Provider, ProviderDomain, ServerSetting

ADD_URL = "/admin/providers/provider/add/"


def inline(prefix: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        data.update({f"{prefix}-{index}-{key}": value for key, value in row.items()})
    return data


def provider_form(
    *,
    domains: list[str],
    incoming: list[dict[str, Any]],
    outgoing: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    data = {
        "name": "Demo Mail",
        "short_name": "Demo",
        "slug": "demo",
        "enabled": "on",
        "hosted": "on",
        "registration": "open",
        "languages": "*",
        "countries": "*",
        "price": "0",
        "quota_mb": "1024",
        "username_min_length": "3",
        "username_max_length": "32",
        "username_punctuation": ".-_",
        "password_min_length": "8",
        **fields,
    }
    data |= inline("domains", [{"name": d, "position": i} for i, d in enumerate(domains)])
    data |= inline("servers", incoming)
    data |= inline("servers-2", outgoing)
    data |= inline("suggestion_clients", [])
    return data


IMAP = {
    "type": "imap",
    "hostname": "imap.example.org",
    "port": "993",
    "socket_type": "SSL",
    "authentication": "password-cleartext",
    "username": "%EMAILADDRESS%",
    "position": "0",
}
SMTP = {
    "hostname": "smtp.example.org",
    "port": "465",
    "socket_type": "SSL",
    "authentication": "password-cleartext",
    "username": "%EMAILADDRESS%",
    "position": "0",
}


def test_admin_adds_provider_with_domains_and_servers(admin_client: Any) -> None:
    response = admin_client.post(
        ADD_URL,
        provider_form(domains=["example.org", "Bücher.example"], incoming=[IMAP], outgoing=[SMTP]),
    )

    assert response.status_code == HTTPStatus.FOUND, response.context["errors"]
    provider = Provider.objects.get(slug="demo")
    assert list(provider.domains.values_list("name", flat=True)) == [
        "example.org",
        "xn--bcher-kva.example",
    ]
    assert list(provider.servers.values_list("type", "hostname", "port")) == [
        ("imap", "imap.example.org", 993),
        ("smtp", "smtp.example.org", 465),
    ]


def errors_of(response: Any) -> str:
    return " ".join(str(e) for e in response.context["errors"]) + " ".join(
        str(e)
        for formset in response.context["inline_admin_formsets"]
        for e in formset.formset.non_form_errors()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"incoming": [IMAP | {"port": "70000"}]}, "less than or equal to 65535"),
        ({"incoming": [IMAP | {"socket_type": "STARTTLS"}]}, "Port 993 is IMAPS"),
        ({"incoming": [IMAP | {"hostname": "imaps://imap.example.org"}]}, "without http://"),
        ({"incoming": [IMAP | {"username": "%USER%"}]}, "Unknown placeholder %USER%"),
        ({"incoming": []}, "at least one incoming"),
        ({"outgoing": []}, "at least one outgoing"),
        ({"domains": []}, "at least one domain"),
        ({"domains": ["localhost"]}, "has no dot"),
        ({"registration_url": "https://x.example/{email}"}, "Leave empty for a hosted provider"),
    ],
)
def test_admin_explains_invalid_provider_in_mail_admin_terms(
    admin_client: Any, change: dict[str, Any], message: str
) -> None:
    arguments = {"domains": ["example.org"], "incoming": [IMAP], "outgoing": [SMTP]}
    fields = {k: v for k, v in change.items() if k not in arguments}
    arguments |= {k: v for k, v in change.items() if k in arguments}

    response = admin_client.post(ADD_URL, provider_form(**arguments, **fields))

    assert response.status_code == HTTPStatus.OK
    assert message in errors_of(response)
    assert not Provider.objects.exists()


def test_admin_names_the_owner_of_a_taken_domain(admin_client: Any, make_provider: Any) -> None:
    make_provider(domains=("example.org",), slug="first", name="First Mail")

    response = admin_client.post(
        ADD_URL, provider_form(domains=["EXAMPLE.org"], incoming=[IMAP], outgoing=[SMTP])
    )

    assert "already belongs to the provider First Mail" in errors_of(response)
    assert ProviderDomain.objects.count() == 1


def test_admin_changelist_searches_by_domain_and_links_previews(
    admin_client: Any, make_provider: Any
) -> None:
    make_provider(domains=("example.org", "bücher.example"), slug="demo", name="Demo Mail")
    make_provider(domains=("other.example",), slug="other", name="Other Mail")

    response = admin_client.get("/admin/providers/provider/", {"q": "bcher"})

    assert response.status_code == HTTPStatus.OK
    content = response.content.decode()
    assert "Demo Mail" in content
    assert "Other Mail" not in content
    assert "example.org (+1)" in content
    assert "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=user%40example.org" in content


def test_admin_change_page_shows_idn_domain_readably(admin_client: Any, make_provider: Any) -> None:
    provider = make_provider(domains=("bücher.example",), slug="books")

    response = admin_client.get(f"/admin/providers/provider/{provider.pk}/change/")

    assert response.status_code == HTTPStatus.OK
    assert 'value="bücher.example"' in response.content.decode()


def test_admin_preview_link_serves_the_document(admin_client: Any, make_provider: Any) -> None:
    make_provider(domains=("example.org",))

    response = admin_client.get(
        "/.well-known/autoconfig/mail/config-v1.1.xml", {"emailaddress": "user@example.org"}
    )

    assert response.status_code == HTTPStatus.OK


def test_admin_lists_domains_and_suggestion_clients(admin_client: Any, make_provider: Any) -> None:
    make_provider(domains=("example.org",))

    assert admin_client.get("/admin/providers/providerdomain/").status_code == HTTPStatus.OK
    assert admin_client.get("/admin/providers/suggestionclient/").status_code == HTTPStatus.OK
    assert ServerSetting.objects.count() == 2
