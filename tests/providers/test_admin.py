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
        "cancel_answer": "document",
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


# ----- suggestions: statistics, settings, client tokens ---------------------------------------


def test_admin_provider_list_shows_the_last_days_suggestions_and_flags_a_failing_provider(
    admin_client: Any, make_provider: Any
) -> None:
    from providers import provisioner
    from providers.services import suggestion_stats

    healthy = make_provider(domains=("healthy.example",), name="Healthy Mail")
    failing = make_provider(domains=("failing.example",), name="Failing Mail")
    ok = provisioner.hosted_answer("healthy.example", ["a@healthy.example"], 0, 40)
    timeout = provisioner.failed("failing.example", provisioner.TIMEOUT, latency_ms=3000)
    suggestion_stats.record([(healthy.pk, ok), (failing.pk, timeout)])
    suggestion_stats.record([(healthy.pk, ok), (failing.pk, ok)])

    response = admin_client.get("/admin/providers/provider/")

    assert response.status_code == HTTPStatus.OK
    content = response.content.decode()
    assert "0% (0 timeouts, 0 errors)" in content
    assert '<strong style="color:#ba2121">50% (1 timeouts, 0 errors)</strong>' in content
    assert "40 / 40" in content
    assert "1520 / 3000" in content
    sorted_page = admin_client.get("/admin/providers/provider/", {"o": "-8"})
    assert sorted_page.status_code == HTTPStatus.OK


def test_admin_provider_page_summarises_suggestions_and_says_why_it_is_unlisted(
    admin_client: Any, make_provider: Any
) -> None:
    provider = make_provider(registration="token")

    response = admin_client.get(f"/admin/providers/provider/{provider.pk}/change/")

    content = response.content.decode()
    assert "No queries." in content
    assert "no: terms of service URL, privacy policy URL, registration open to everyone" in content
    assert f"/admin/providers/suggestionstat/?provider__id__exact={provider.pk}" in content


def test_admin_hourly_suggestion_statistics_are_read_only(
    admin_client: Any, make_provider: Any
) -> None:
    from providers import provisioner
    from providers.models import SuggestionStat
    from providers.services import suggestion_stats

    provider = make_provider()
    error = provisioner.failed("example.org", provisioner.ERROR, latency_ms=12)
    suggestion_stats.record([(provider.pk, error)])
    stat = SuggestionStat.objects.get()

    listing = admin_client.get(
        "/admin/providers/suggestionstat/", {"provider__id__exact": provider.pk}
    )
    detail = admin_client.get(f"/admin/providers/suggestionstat/{stat.pk}/change/")
    add = admin_client.get("/admin/providers/suggestionstat/add/")
    post = admin_client.post(f"/admin/providers/suggestionstat/{stat.pk}/change/", {"queries": 0})

    assert listing.status_code == HTTPStatus.OK
    assert "100%" in listing.content.decode()
    assert detail.status_code == HTTPStatus.OK  # view only
    assert add.status_code == HTTPStatus.FORBIDDEN
    assert post.status_code == HTTPStatus.FORBIDDEN
    assert SuggestionStat.objects.get().queries == 1


def test_admin_suggestion_settings_take_both_numbers_or_neither(admin_client: Any) -> None:
    from django.core.cache import cache

    from providers.models import SUGGESTION_RATE_CACHE_KEY, SuggestionSettings

    cache.delete(SUGGESTION_RATE_CACHE_KEY)  # the rate in force is cached for 30 s
    url = "/admin/providers/suggestionsettings/add/"
    half = admin_client.post(url, {"rate_count": "5", "rate_minutes": ""})
    whole = admin_client.post(url, {"rate_count": "5", "rate_minutes": "10"})

    assert half.status_code == HTTPStatus.OK
    assert "Fill in both" in half.content.decode()
    assert whole.status_code == HTTPStatus.FOUND
    assert SuggestionSettings.current_rate() == "5/10m"
    assert admin_client.get(url).status_code == HTTPStatus.FORBIDDEN  # one row only
    assert admin_client.get("/admin/providers/suggestionsettings/").status_code == HTTPStatus.OK


def test_admin_issues_suggestion_client_tokens_once_and_keeps_only_their_hash(
    admin_client: Any, make_provider: Any
) -> None:
    from providers.models import SuggestionClient

    make_provider()
    first = SuggestionClient.objects.create(network="192.0.2.0/24", note="aggregator one")
    second = SuggestionClient.objects.create(network="198.51.100.7/32")
    url = "/admin/providers/suggestionclient/"

    issued = admin_client.post(
        url, {"action": "issue_tokens", "_selected_action": [first.pk, second.pk]}
    )
    first.refresh_from_db()
    listing = admin_client.get(url).content.decode()
    removed = admin_client.post(
        url, {"action": "remove_tokens", "_selected_action": [first.pk]}, follow=True
    )

    content = issued.content.decode()
    assert issued.status_code == HTTPStatus.OK
    assert "shown this once" in content
    assert "no-store" in issued["Cache-Control"]
    assert content.count("<code>") == 2
    token = content.split("<code>")[1].split("</code>")[0]
    assert len(token) >= 43  # 32 random bytes
    assert first.token_sha256 and first.token_sha256 not in content
    assert token not in listing and first.token_sha256 not in listing
    assert "1 tokens removed, 0 had none." in removed.content.decode()
    assert SuggestionClient.objects.get(pk=first.pk).token_sha256 == ""
    assert SuggestionClient.objects.get(pk=second.pk).token_sha256 != ""


@pytest.mark.parametrize("action", ["issue_tokens", "remove_tokens"])
def test_admin_token_actions_are_for_those_who_may_change_suggestion_clients(
    client: Any, django_user_model: Any, make_provider: Any, action: str
) -> None:
    from django.contrib.auth.models import Permission

    from providers.models import SuggestionClient
    from providers.services import suggestion_clients

    make_provider()
    row = SuggestionClient.objects.create(network="192.0.2.0/24")
    suggestion_clients.issue_tokens(client_ids=[row.pk])
    before = SuggestionClient.objects.get(pk=row.pk).token_sha256
    url = "/admin/providers/suggestionclient/"
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_suggestionclient"))
    stranger = django_user_model.objects.create_user("stranger", password="x")
    post = {"action": action, "_selected_action": [row.pk]}

    client.force_login(viewer)
    listing = client.get(url)
    as_viewer = client.post(url, post, follow=True)
    client.force_login(stranger)
    as_stranger = client.post(url, post)

    assert listing.status_code == HTTPStatus.OK  # the viewer sees the list...
    assert f'value="{action}"' not in listing.content.decode()  # ...without the action
    assert "<code>" not in as_viewer.content.decode()  # no token shown
    assert as_stranger.status_code == HTTPStatus.FOUND  # to the login page
    assert SuggestionClient.objects.get(pk=row.pk).token_sha256 == before  # nothing changed


# ----- the registration pages' look ----------------------------------------------------------

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def _with_logo(name: str, data: bytes, **fields: Any) -> dict[str, Any]:
    from django.core.files.uploadedfile import SimpleUploadedFile

    form = provider_form(domains=["example.org"], incoming=[IMAP], outgoing=[SMTP], **fields)
    # The browser's claimed type is ignored: the bytes decide.
    return form | {"logo_file": SimpleUploadedFile(name, data, content_type="image/png")}


def test_admin_stores_an_uploaded_logo_by_its_bytes_and_shows_the_page_link(
    admin_client: Any,
) -> None:
    response = admin_client.post(ADD_URL, _with_logo("logo.png", PNG, accent_color="#AA3300"))

    assert response.status_code == HTTPStatus.FOUND, response.context["errors"]
    provider = Provider.objects.get(slug="demo")
    assert (bytes(provider.logo), provider.logo_type) == (PNG, "image/png")
    assert provider.accent_color == "#aa3300"
    page = admin_client.get(f"/admin/providers/provider/{provider.pk}/change/")
    assert 'href="/register/demo/"' in page.content.decode()
    assert 'src="/register/demo/logo"' in page.content.decode()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="x()"/>', "event handlers"),
        ("logo.png", b"MZ\x90\x00 not an image", "Upload a PNG"),
    ],
)
def test_admin_refuses_a_logo_that_is_not_a_safe_image(
    admin_client: Any, name: str, data: bytes, message: str
) -> None:
    response = admin_client.post(ADD_URL, _with_logo(name, data))

    assert response.status_code == HTTPStatus.OK
    assert message in str(response.context["errors"])
    assert not Provider.objects.exists()


def test_admin_refuses_a_malformed_accent_colour(admin_client: Any) -> None:
    form = provider_form(domains=["example.org"], incoming=[IMAP], outgoing=[SMTP])

    response = admin_client.post(ADD_URL, form | {"accent_color": "blue"})

    assert response.status_code == HTTPStatus.OK
    assert "six hex digits" in str(response.context["errors"])


def test_admin_removes_the_logo(admin_client: Any) -> None:
    admin_client.post(ADD_URL, _with_logo("logo.png", PNG))
    provider = Provider.objects.get(slug="demo")
    change = f"/admin/providers/provider/{provider.pk}/change/"
    page = admin_client.get(change)
    data = {
        key: value
        for key, value in page.context["adminform"].form.initial.items()
        if isinstance(value, str | int) and not isinstance(value, bool)
    }
    form = provider_form(domains=[], incoming=[], outgoing=[]) | data
    # The existing inline rows, as the change page sends them back.
    for prefix, formset in (
        ("domains", provider.domains.all()),
        ("servers", provider.servers.filter(type="imap")),
        ("servers-2", provider.servers.filter(type="smtp")),
    ):
        rows = list(formset.values())
        form[f"{prefix}-TOTAL_FORMS"] = form[f"{prefix}-INITIAL_FORMS"] = str(len(rows))
        for index, row in enumerate(rows):
            row["provider"] = row.pop("provider_id")
            form |= {f"{prefix}-{index}-{key}": value for key, value in row.items()}

    response = admin_client.post(
        change, form | {"remove_logo": "on", "enabled": "on", "hosted": "on"}
    )

    assert response.status_code == HTTPStatus.FOUND, response.context["errors"]
    provider.refresh_from_db()
    assert (bytes(provider.logo), provider.logo_type) == (b"", "")
