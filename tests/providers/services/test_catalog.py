"""Tests for providers/services/catalog.py: importing and exporting the provider catalog."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.models import Provider, ProviderDomain, ServerSetting, SuggestionClient
from providers.services.catalog import (
    CatalogError,
    ImportResult,
    export_providers,
    import_providers,
    load_catalog_file,
)

DEMO_FILE = Path(__file__).resolve().parents[3] / "deploy" / "demo-providers.json"

pytestmark = pytest.mark.django_db


def server(type_: str, hostname: str, port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "hostname": hostname,
        "port": port,
        "socketType": "SSL",
        "authentication": "password-cleartext",
        "username": "%EMAILADDRESS%",
        **overrides,
    }


def provider_entry(slug: str, **overrides: Any) -> dict[str, Any]:
    """A valid hosted provider serving <slug>.example, with one IMAP and one SMTP server."""
    return {
        "slug": slug,
        "name": f"{slug.title()} Mail",
        "shortName": slug.title(),
        "domains": [f"{slug}.example"],
        "incoming": [server("imap", f"imap.{slug}.example", 993)],
        "outgoing": [server("smtp", f"smtp.{slug}.example", 465)],
        **overrides,
    }


def table_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every catalog row, ids and timestamps included."""
    return {
        model.__name__: list(model.objects.order_by("id").values_list())
        for model in (Provider, ProviderDomain, ServerSetting, SuggestionClient)
    }


def writes(queries: CaptureQueriesContext) -> list[str]:
    return [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith(("INSERT", "UPDATE", "DELETE"))
    ]


def test_demo_file_imports_the_demo_provider() -> None:
    result = import_providers(data=load_catalog_file(DEMO_FILE))

    assert result == ImportResult(
        created=1,
        updated=0,
        unchanged=0,
        suggestion_clients_added=2,
        suggestion_clients_removed=0,
    )
    demo = Provider.objects.get(slug="demo")
    assert (demo.name, demo.short_name, demo.hosted, demo.enabled) == (
        "Demo Mail",
        "Demo",
        True,
        True,
    )
    assert (demo.registration, demo.registration_url, demo.suggestion_url) == ("open", "", "")
    assert (demo.languages, demo.countries, demo.price, demo.quota_mb) == ("*", "*", 0, 1024)
    assert demo.tos_url == "https://example.org/tos"
    assert demo.primary_domain == "example.org"
    assert [str(s) for s in demo.servers.all()] == [
        "IMAP imap.example.org:993",
        "SMTP smtp.example.org:465",
    ]
    assert set(SuggestionClient.objects.values_list("network", "provider")) == {
        ("127.0.0.1/32", None),
        ("::1/128", None),
    }


def test_import_stores_domains_and_servers_as_given_in_file_order() -> None:
    entry = provider_entry(
        "books",
        domains=["books.example", "bücher.example"],
        incoming=[
            server("imap", "mail.books.example", 143, socketType="STARTTLS"),
            server("pop3", "pop.books.example", 995, username="%EMAILLOCALPART%"),
        ],
        outgoing=[server("smtp", "smtp.books.example", 587, socketType="STARTTLS")],
    )

    import_providers(data={"providers": [entry]})

    provider = Provider.objects.get(slug="books")
    assert list(provider.domains.values_list("name", "position")) == [
        ("books.example", 0),
        ("xn--bcher-kva.example", 1),
    ]
    assert provider.primary_domain == "books.example"
    assert list(
        provider.servers.order_by("id").values_list(
            "type", "hostname", "port", "socket_type", "authentication", "username", "position"
        )
    ) == [
        ("imap", "mail.books.example", 143, "STARTTLS", "password-cleartext", "%EMAILADDRESS%", 0),
        ("pop3", "pop.books.example", 995, "SSL", "password-cleartext", "%EMAILLOCALPART%", 1),
        ("smtp", "smtp.books.example", 587, "STARTTLS", "password-cleartext", "%EMAILADDRESS%", 0),
    ]


def test_import_gives_left_out_keys_the_model_defaults() -> None:
    import_providers(data={"providers": [provider_entry("plain")]})

    provider = Provider.objects.get(slug="plain")
    assert (provider.enabled, provider.registration, provider.languages, provider.quota_mb) == (
        True,
        "open",
        "*",
        1024,
    )
    assert provider.is_free


def _second_with(**overrides: Any) -> dict[str, Any]:
    return provider_entry("second", **overrides)


@pytest.mark.parametrize(
    ("second", "error"),
    [
        pytest.param(
            _second_with(incoming=[server("imap", "imap.second.example", 70000)]),
            "incoming[0].port: Ensure this value is less than or equal to 65535.",
            id="port",
        ),
        pytest.param(
            _second_with(outgoing=[server("smtp", "smtp.second.example", 587, socketType="TLS")]),
            "outgoing[0].socketType: Value 'TLS' is not a valid choice.",
            id="socket-type",
        ),
        pytest.param(
            _second_with(incoming=[server("imap", "imap.second.example", 143, socketType="plain")]),
            None,
            id="valid-control",
        ),
        pytest.param(_second_with(colour="blue"), "colour: Unknown key.", id="unknown-key"),
        pytest.param(
            _second_with(incoming=[{**server("imap", "imap.second.example", 993), "tls": True}]),
            "incoming[0].tls: Unknown key.",
            id="unknown-server-key",
        ),
        pytest.param(
            {k: v for k, v in _second_with().items() if k != "domains"},
            "domains: Required key is missing.",
            id="missing-key",
        ),
        pytest.param(
            _second_with(domains=["taken.example"]),
            "domains[0]: taken.example already belongs to the provider Other Mail.",
            id="domain-of-another-provider",
        ),
        pytest.param(
            _second_with(domains=["https://second.example/"]),
            "domains[0]: Enter just the domain, like example.org, without http:// or a path.",
            id="domain-as-url",
        ),
        pytest.param(
            _second_with(domains=["first.example"]),
            "domains[0]: first.example is listed already, at providers[0] (first): domains[0].",
            id="domain-twice-in-file",
        ),
        pytest.param(
            _second_with(registrationUrl="https://second.example/signup?email={email}"),
            "registrationUrl: Leave empty for a hosted provider: people register on this portal.",
            id="model-clean",
        ),
        pytest.param(
            _second_with(outgoing=[server("imap", "imap.second.example", 993)]),
            "outgoing[0].type: Use smtp: outgoing servers are where mail is sent.",
            id="server-in-wrong-list",
        ),
        pytest.param(
            _second_with(price=-1),
            "price: Ensure this value is greater than or equal to 0.",
            id="price",
        ),
        pytest.param(
            _second_with(quotaMB="1024"), "quotaMB: Expected a whole number.", id="json-type"
        ),
    ],
)
def test_import_changes_nothing_when_one_field_is_wrong(
    second: dict[str, Any], error: str | None
) -> None:
    other = Provider.objects.create(slug="other", name="Other Mail", short_name="Other")
    ProviderDomain.objects.create(provider=other, name="taken.example")
    before = table_rows()
    data = {"providers": [provider_entry("first"), second], "suggestionClients": ["10.0.0.0/8"]}

    if error is None:  # the same file without the mistake imports: the mistake is the cause
        assert import_providers(data=data).created == 2
        return
    with pytest.raises(CatalogError) as caught:
        import_providers(data=data)

    assert caught.value.code == "catalog_invalid"
    assert caught.value.message == f"providers[1] (second): {error}"
    assert table_rows() == before
    assert not Provider.objects.filter(slug="first").exists()


def test_import_reports_every_error_with_its_provider_and_field() -> None:
    data = {
        "providers": [
            provider_entry("first", shortName=""),
            {"name": "No Slug", "hosted": False, "domains": ["noslug.example"]},
        ],
        "suggestionClients": ["10.0.0.1/8"],
        "version": 2,
    }

    with pytest.raises(CatalogError) as caught:
        import_providers(data=data)

    assert caught.value.message.splitlines() == [
        "version: Unknown key.",
        "providers[0] (first): shortName: This field cannot be blank.",
        "providers[1]: slug: Required key is missing.",
        "providers[1]: slug: This field cannot be blank.",
        "providers[1]: shortName: This field cannot be blank.",
        "providers[1]: registrationUrl: A remote provider needs its sign-up URL template, e.g. "
        "https://provider.example/signup?email={email}.",
        "providers[1]: suggestionUrl: A remote provider needs its suggestion API URL.",
        "suggestionClients[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
    ]


def test_import_twice_changes_nothing_the_second_time() -> None:
    data = {
        "providers": [
            provider_entry("first", domains=["first.example", "bücher.example"]),
            provider_entry("second", suggestionClients=["192.0.2.0/24"], enabled=False),
        ],
        "suggestionClients": ["127.0.0.1/32"],
    }
    import_providers(data=copy.deepcopy(data))
    before = table_rows()

    with CaptureQueriesContext(connection) as queries:
        result = import_providers(data=copy.deepcopy(data))

    assert result == ImportResult(
        created=0,
        updated=0,
        unchanged=2,
        suggestion_clients_added=0,
        suggestion_clients_removed=0,
    )
    assert writes(queries) == []
    assert table_rows() == before


def test_import_updates_only_the_server_whose_port_changed() -> None:
    entry = provider_entry(
        "first",
        incoming=[
            server("imap", "imap.first.example", 993),
            server("pop3", "pop.first.example", 995),
        ],
    )
    import_providers(data={"providers": [entry, provider_entry("second")]})
    servers_before = {row["id"]: row for row in ServerSetting.objects.values()}
    second_before = Provider.objects.filter(slug="second").values().get()
    pop3_id = ServerSetting.objects.get(type="pop3").pk
    entry["incoming"][1]["port"] = 1995

    with CaptureQueriesContext(connection) as queries:
        result = import_providers(data={"providers": [entry, provider_entry("second")]})

    assert (result.created, result.updated, result.unchanged) == (0, 1, 1)
    server_writes = [sql for sql in writes(queries) if "serversetting" in sql]
    assert len(server_writes) == 1
    assert server_writes[0].startswith('UPDATE "providers_serversetting" SET "port" = 1995 ')
    assert {row["id"]: row for row in ServerSetting.objects.values()} == {
        **servers_before,
        pop3_id: {**servers_before[pop3_id], "port": 1995},
    }
    assert Provider.objects.filter(slug="second").values().get() == second_before


def test_import_reorders_and_removes_rows_keeping_their_ids() -> None:
    entry = provider_entry("first", domains=["first.example", "second.example", "third.example"])
    import_providers(data={"providers": [entry]})
    ids = dict(ProviderDomain.objects.values_list("name", "id"))

    entry["domains"] = ["third.example", "first.example"]
    result = import_providers(data={"providers": [entry]})

    assert result.updated == 1
    provider = Provider.objects.get(slug="first")
    assert list(provider.domains.values_list("name", "id", "position")) == [
        ("third.example", ids["third.example"], 0),
        ("first.example", ids["first.example"], 1),
    ]
    assert provider.primary_domain == "third.example"


def test_import_moves_a_domain_between_providers_of_the_file() -> None:
    first = provider_entry("first", domains=["first.example", "shared.example"])
    second = provider_entry("second")
    import_providers(data={"providers": [first, second]})
    shared_id = ProviderDomain.objects.get(name="shared.example").pk

    first["domains"] = ["first.example"]
    second["domains"] = ["second.example", "shared.example"]
    result = import_providers(data={"providers": [first, second]})

    assert (result.updated, result.unchanged) == (2, 0)
    shared = ProviderDomain.objects.select_related("provider").get(name="shared.example")
    assert (shared.pk, shared.provider.slug, shared.position) == (shared_id, "second", 1)


def test_import_moves_a_domain_to_a_new_provider_of_the_file() -> None:
    import_providers(
        data={"providers": [provider_entry("first", domains=["first.example", "x.example"])]}
    )
    moved_id = ProviderDomain.objects.get(name="x.example").pk

    result = import_providers(
        data={
            "providers": [provider_entry("first"), provider_entry("third", domains=["x.example"])]
        }
    )

    assert (result.created, result.updated) == (1, 1)
    moved = ProviderDomain.objects.select_related("provider").get(name="x.example")
    assert (moved.pk, moved.provider.slug, moved.position) == (moved_id, "third", 0)


def test_import_refuses_a_slug_listed_twice() -> None:
    with pytest.raises(CatalogError) as caught:
        import_providers(data={"providers": [provider_entry("first"), provider_entry("first")]})

    assert caught.value.message == (
        "providers[1] (first): slug: first is listed already, as providers[0]."
    )
    assert not Provider.objects.exists()


def test_import_leaves_providers_not_in_the_file_alone() -> None:
    import_providers(data={"providers": [provider_entry("first"), provider_entry("second")]})
    before = table_rows()

    result = import_providers(data={"providers": [provider_entry("first")]})

    assert (result.created, result.updated, result.unchanged) == (0, 0, 1)
    assert table_rows() == before


def test_global_suggestion_clients_become_exactly_the_file_list() -> None:
    import_providers(data={"providers": [provider_entry("first")]})
    kept = SuggestionClient.objects.create(network="127.0.0.1/32", note="the portal itself")
    SuggestionClient.objects.create(network="10.0.0.0/8")
    own = SuggestionClient.objects.create(
        network="10.0.0.0/8", provider=Provider.objects.get(slug="first")
    )

    result = import_providers(data={"providers": [], "suggestionClients": ["127.0.0.1", "::1/128"]})

    assert (result.suggestion_clients_added, result.suggestion_clients_removed) == (1, 1)
    assert set(SuggestionClient.objects.values_list("id", "network", "provider", "note")) == {
        (kept.pk, "127.0.0.1/32", None, "the portal itself"),
        (own.pk, "10.0.0.0/8", own.provider_id, ""),
        (SuggestionClient.objects.get(network="::1/128").pk, "::1/128", None, ""),
    }


def test_import_leaves_global_suggestion_clients_alone_when_the_key_is_left_out() -> None:
    SuggestionClient.objects.create(network="10.0.0.0/8")

    result = import_providers(data={"providers": [provider_entry("first")]})

    assert (result.suggestion_clients_added, result.suggestion_clients_removed) == (0, 0)
    assert list(SuggestionClient.objects.values_list("network", flat=True)) == ["10.0.0.0/8"]


def test_provider_suggestion_clients_become_exactly_the_file_list() -> None:
    entry = provider_entry("first", suggestionClients=["192.0.2.0/24", "198.51.100.7"])
    import_providers(data={"providers": [entry]})

    entry["suggestionClients"] = ["198.51.100.7/32", "2001:db8::/48"]
    result = import_providers(data={"providers": [entry]})

    assert (result.updated, result.suggestion_clients_added, result.suggestion_clients_removed) == (
        1,
        1,
        1,
    )
    assert list(
        SuggestionClient.objects.filter(provider__slug="first").values_list("network", flat=True)
    ) == ["198.51.100.7/32", "2001:db8::/48"]


def test_price_is_free_or_a_yearly_number() -> None:
    import_providers(
        data={
            "providers": [
                provider_entry("free", price="free"),
                provider_entry("zero", price=0),
                provider_entry("paid", price=4.99),
                provider_entry("round", price=12),
            ]
        }
    )

    prices = dict(Provider.objects.values_list("slug", "price"))
    assert prices == {
        "free": Decimal(0),
        "zero": Decimal(0),
        "paid": Decimal("4.99"),
        "round": Decimal(12),
    }
    exported = {entry["slug"]: entry["price"] for entry in export_providers()["providers"]}
    assert exported == {"free": "free", "zero": "free", "paid": 4.99, "round": 12}


def test_export_then_import_on_an_empty_database_reproduces_the_rows() -> None:
    import_providers(data=load_catalog_file(DEMO_FILE))
    import_providers(
        data={
            "providers": [
                provider_entry(
                    "books",
                    domains=["bücher.example", "books.example"],
                    languages=["de", "en"],
                    countries=["DE", "AT"],
                    price=4.99,
                    enabled=False,
                    registration="token",
                    suggestionClients=["192.0.2.0/24"],
                ),
                provider_entry(
                    "remote",
                    hosted=False,
                    registrationUrl="https://remote.example/signup?email={email}",
                    suggestionUrl="https://remote.example/suggest",
                    incoming=[],
                    outgoing=[],
                ),
            ]
        }
    )
    exported = export_providers()
    Provider.objects.all().delete()
    SuggestionClient.objects.all().delete()

    result = import_providers(data=copy.deepcopy(exported))

    assert (result.created, result.suggestion_clients_added) == (3, 3)
    assert export_providers() == exported
    assert import_providers(data=copy.deepcopy(exported)).unchanged == 3


def test_export_writes_a_labels_and_keys_in_the_spec_order() -> None:
    import_providers(data={"providers": [provider_entry("books", domains=["bücher.example"])]})

    entry = export_providers()["providers"][0]

    assert entry["domains"] == ["xn--bcher-kva.example"]
    assert list(entry) == [
        "slug",
        "name",
        "shortName",
        "domains",
        "hosted",
        "registration",
        "registrationUrl",
        "suggestionUrl",
        "languages",
        "countries",
        "homepage",
        "tosUrl",
        "privacyUrl",
        "price",
        "quotaMB",
        "incoming",
        "outgoing",
    ]


def test_import_of_an_export_changes_nothing_for_rows_made_in_admin() -> None:
    # Admin leaves positions at their default 0.
    provider = Provider.objects.create(
        slug="admin", name="Admin Mail", short_name="Admin", languages="en,de"
    )
    ProviderDomain.objects.create(provider=provider, name="admin.example")
    ProviderDomain.objects.create(provider=provider, name="admin.example.net")
    for type_, port in (("imap", 993), ("pop3", 995), ("smtp", 465)):
        ServerSetting.objects.create(
            provider=provider, type=type_, hostname=f"{type_}.admin.example", port=port
        )
    before = table_rows()

    with CaptureQueriesContext(connection) as queries:
        result = import_providers(data=export_providers())

    assert result.unchanged == 1
    assert writes(queries) == []
    assert table_rows() == before


def test_load_catalog_file_refuses_what_is_not_a_catalog(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"providers": [}', encoding="utf-8")
    twice = tmp_path / "twice.json"
    twice.write_text('{"providers": [], "providers": []}', encoding="utf-8")
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")

    messages = []
    for path in (broken, twice, listed, tmp_path / "missing.json"):
        with pytest.raises(CatalogError) as caught:
            load_catalog_file(path)
        messages.append(caught.value.message.removeprefix(f"{path}: "))

    assert messages[0] == "not valid JSON: Expecting value at line 1 column 16."
    assert messages[1] == "the key 'providers' appears twice in one object."
    assert messages[2] == 'expected a JSON object with a "providers" list.'
    assert messages[3].startswith("cannot read the file (")


def test_account_rules_round_trip_and_defaults_stay_out_of_the_export() -> None:
    data = {
        "providers": [
            {
                "slug": "strict",
                "name": "Strict Mail",
                "shortName": "Strict",
                "domains": ["strict.example"],
                "incoming": [
                    {
                        "type": "imap",
                        "hostname": "imap.strict.example",
                        "port": 993,
                        "socketType": "SSL",
                        "authentication": "password-cleartext",
                        "username": "%EMAILADDRESS%",
                    }
                ],
                "outgoing": [
                    {
                        "type": "smtp",
                        "hostname": "smtp.strict.example",
                        "port": 465,
                        "socketType": "SSL",
                        "authentication": "password-cleartext",
                        "username": "%EMAILADDRESS%",
                    }
                ],
                "passwordMinLength": 12,
                "requireVerifiedEmail": True,
                "requireApproval": True,
                "accentColor": "#AA3300",
                "cancelAnswer": "page",
            }
        ]
    }

    import_providers(data=data)
    (entry,) = export_providers()["providers"]

    strict = Provider.objects.get(slug="strict")
    assert (strict.require_verified_email, strict.require_approval) == (True, True)
    assert (entry["passwordMinLength"], entry["requireVerifiedEmail"]) == (12, True)
    assert entry["requireApproval"] is True
    assert (entry["accentColor"], entry["cancelAnswer"]) == ("#aa3300", "page")
    assert "usernameMinLength" not in entry
    assert import_providers(data=export_providers()).unchanged == 1


def test_suggestion_settings_round_trip_and_are_exported_only_when_set() -> None:
    data = {
        "providers": [
            provider_entry("quick", suggestionTimeout=1.5, suggestionCount=8),
            provider_entry("plain"),
        ]
    }

    import_providers(data=data)
    entries = {entry["slug"]: entry for entry in export_providers()["providers"]}

    quick = Provider.objects.get(slug="quick")
    assert (quick.suggestion_timeout, quick.suggestion_count) == (1.5, 8)
    assert (entries["quick"]["suggestionTimeout"], entries["quick"]["suggestionCount"]) == (1.5, 8)
    assert "suggestionTimeout" not in entries["plain"]
    assert import_providers(data=export_providers()).unchanged == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("suggestionTimeout", "3", "Expected a number of seconds."),
        ("suggestionTimeout", 0.01, "Ensure this value is greater than or equal to 0.2."),
        ("suggestionCount", 1.5, "Expected a whole number."),
        ("suggestionCount", 99, "Ensure this value is less than or equal to 20."),
    ],
)
def test_suggestion_settings_refuse_wrong_values(key: str, value: Any, message: str) -> None:
    with pytest.raises(CatalogError) as refused:
        import_providers(data={"providers": [provider_entry("quick", **{key: value})]})

    assert f"providers[0] (quick): {key}: {message}" in str(refused.value)
    assert not Provider.objects.exists()
