"""The autoconfig endpoints as mail clients fetch them (specs/autoconfig.md)."""

from __future__ import annotations

import plistlib
from http import HTTPStatus
from typing import Any

import pytest
from defusedxml import ElementTree as SafeET

from providers.models import ServerSetting

AUTODISCOVER_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>juliet@example.org</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""
RESPONSE_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


@pytest.fixture
def provider(make_provider: Any) -> Any:
    """Two domains (one IDN), IMAP preferred over POP3, one SMTP server."""
    return make_provider(
        domains=("example.org", "bücher.example"),
        servers=(
            {"type": "imap", "hostname": "imap.example.org", "port": 993, "socket_type": "SSL"},
            {
                "type": "pop3",
                "hostname": "pop.example.org",
                "port": 110,
                "socket_type": "STARTTLS",
                "username": "%EMAILLOCALPART%",
            },
            {
                "type": "smtp",
                "hostname": "smtp.example.org",
                "port": 587,
                "socket_type": "STARTTLS",
                "authentication": "password-encrypted",
            },
        ),
        name='Example <Mail> & "Co" ]]>',
        short_name="Exämple",
        slug="example",
    )


def servers_of(root: Any) -> list[dict[str, str]]:
    provider = root.find("emailProvider")
    result = []
    for element in provider:
        if element.tag in {"incomingServer", "outgoingServer"}:
            fields = {child.tag: child.text for child in element}
            result.append({"type": element.get("type"), **fields})
    return result


@pytest.mark.parametrize(
    "path", ["/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"]
)
def test_clientconfig_carries_exactly_the_admin_settings(
    client: Any, provider: Any, path: str, validate_clientconfig: Any
) -> None:
    response = client.get(path, {"emailaddress": "juliet@example.org"})

    assert response.status_code == HTTPStatus.OK
    assert validate_clientconfig(response.content) == []
    assert response["Content-Type"] == "text/xml; charset=utf-8"
    root = SafeET.fromstring(response.content)
    assert root.get("version") == "1.1"
    email_provider = root.find("emailProvider")
    assert email_provider.get("id") == "example.org"
    assert [d.text for d in email_provider.findall("domain")] == [
        "example.org",
        "xn--bcher-kva.example",
    ]
    assert email_provider.findtext("displayName") == 'Example <Mail> & "Co" ]]>'
    assert email_provider.findtext("displayShortName") == "Exämple"
    assert servers_of(root) == [
        {
            "type": "imap",
            "hostname": "imap.example.org",
            "port": "993",
            "socketType": "SSL",
            "authentication": "password-cleartext",
            "username": "%EMAILADDRESS%",
        },
        {
            "type": "pop3",
            "hostname": "pop.example.org",
            "port": "110",
            "socketType": "STARTTLS",
            "authentication": "password-cleartext",
            "username": "%EMAILLOCALPART%",
        },
        {
            "type": "smtp",
            "hostname": "smtp.example.org",
            "port": "587",
            "socketType": "STARTTLS",
            "authentication": "password-encrypted",
            "username": "%EMAILADDRESS%",
        },
    ]


def test_clientconfig_matches_idn_domain_in_either_form(client: Any, provider: Any) -> None:
    unicode_form = client.get("/mail/config-v1.1.xml", {"emailaddress": "a@BÜCHER.example"})
    ascii_form = client.get("/mail/config-v1.1.xml", {"emailaddress": "a@xn--bcher-kva.example"})

    assert unicode_form.status_code == ascii_form.status_code == HTTPStatus.OK
    assert unicode_form.content == ascii_form.content


@pytest.mark.parametrize(
    "host",
    [
        "autoconfig.example.org",
        "example.org",
        "autoconfig.xn--bcher-kva.example",
        "EXAMPLE.ORG:443",
    ],
)
def test_clientconfig_takes_domain_from_host_without_query(
    client: Any, provider: Any, host: str
) -> None:
    response = client.get("/.well-known/autoconfig/mail/config-v1.1.xml", HTTP_HOST=host)

    assert response.status_code == HTTPStatus.OK
    assert SafeET.fromstring(response.content).find("emailProvider").get("id") == "example.org"


def test_clientconfig_answers_404_for_unknown_domain(client: Any, provider: Any) -> None:
    response = client.get("/mail/config-v1.1.xml", {"emailaddress": "a@unknown.example"})

    assert response.status_code == HTTPStatus.NOT_FOUND


@pytest.mark.parametrize(
    "address", ["no-at-sign", "@example.org", "a@-bad-.example", "a@exa mple.org"]
)
def test_clientconfig_answers_400_for_malformed_address(
    client: Any, provider: Any, address: str
) -> None:
    response = client.get("/mail/config-v1.1.xml", {"emailaddress": address})

    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_clientconfig_is_cacheable_with_etag_and_304(client: Any, provider: Any) -> None:
    first = client.get("/mail/config-v1.1.xml", {"emailaddress": "a@example.org"})
    again = client.get(
        "/mail/config-v1.1.xml", {"emailaddress": "a@example.org"}, HTTP_IF_NONE_MATCH=first["ETag"]
    )

    assert "public" in first["Cache-Control"]
    assert "max-age=3600" in first["Cache-Control"]
    assert first["ETag"].startswith('"')
    assert again.status_code == HTTPStatus.NOT_MODIFIED
    assert again.content == b""


def test_clientconfig_follows_an_admin_edit_without_restart(client: Any, provider: Any) -> None:
    before = client.get("/mail/config-v1.1.xml", {"emailaddress": "a@example.org"})
    server = ServerSetting.objects.get(provider=provider, type="imap")
    server.port = 1993
    server.save(update_fields=["port"])

    after = client.get(
        "/mail/config-v1.1.xml",
        {"emailaddress": "a@example.org"},
        HTTP_IF_NONE_MATCH=before["ETag"],
    )

    assert after.status_code == HTTPStatus.OK
    assert after["ETag"] != before["ETag"]
    assert servers_of(SafeET.fromstring(after.content))[0]["port"] == "1993"


def test_new_provider_domain_passes_host_check_without_restart(
    client: Any, make_provider: Any
) -> None:
    refused = client.get("/mail/config-v1.1.xml", HTTP_HOST="autoconfig.later.example")
    make_provider(domains=("later.example",), slug="later")
    accepted = client.get("/mail/config-v1.1.xml", HTTP_HOST="autoconfig.later.example")

    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert accepted.status_code == HTTPStatus.OK


@pytest.mark.parametrize("path", ["/admin/login/", "/api/schema/", "/healthz"])
def test_provider_host_is_refused_outside_autoconfig_paths(
    client: Any, provider: Any, path: str
) -> None:
    response = client.get(path, HTTP_HOST="autoconfig.example.org")

    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_unknown_host_is_refused(client: Any, provider: Any) -> None:
    response = client.get("/mail/config-v1.1.xml", HTTP_HOST="evil.example")

    assert response.status_code == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize(
    "path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"]
)
def test_autodiscover_post_lists_every_server(client: Any, provider: Any, path: str) -> None:
    response = client.post(
        path, AUTODISCOVER_REQUEST, content_type="text/xml", HTTP_HOST="autodiscover.example.org"
    )

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "text/xml; charset=utf-8"
    protocols = SafeET.fromstring(response.content).iter(f"{RESPONSE_NS}Protocol")
    found = [
        (
            p.findtext(f"{RESPONSE_NS}Type"),
            p.findtext(f"{RESPONSE_NS}Server"),
            p.findtext(f"{RESPONSE_NS}Port"),
            p.findtext(f"{RESPONSE_NS}LoginName"),
        )
        for p in protocols
    ]
    assert found == [
        ("IMAP", "imap.example.org", "993", "juliet@example.org"),
        ("POP3", "pop.example.org", "110", "juliet"),
        ("SMTP", "smtp.example.org", "587", "juliet@example.org"),
    ]


def test_autodiscover_get_without_query_answers_for_host_domain(client: Any, provider: Any) -> None:
    # Delta Chat asks https://<domain>/autodiscover/autodiscover.xml by GET, no hints.
    response = client.get("/autodiscover/autodiscover.xml", HTTP_HOST="example.org")

    assert response.status_code == HTTPStatus.OK
    assert b"imap.example.org" in response.content


HOSTILE_BODIES = {
    "billion-laughs": b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
<Request><EMailAddress>&lol3;@example.org</EMailAddress></Request></Autodiscover>""",
    "external-entity": b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
<Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>""",
    "not-xml": b"emailaddress=juliet@example.org",
    "truncated": AUTODISCOVER_REQUEST[:120],
    "empty": b"",
    "deep": b"<a>" * 10000 + b"</a>" * 10000,
    "huge": b"<Autodiscover>" + b" " * 100_000 + b"</Autodiscover>",
    "wrong-root": b"<html><body>hi</body></html>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_autodiscover_refuses_hostile_request_with_400(
    client: Any, provider: Any, name: str
) -> None:
    response = client.post(
        "/autodiscover/autodiscover.xml", HOSTILE_BODIES[name], content_type="text/xml"
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"root:" not in response.content  # nothing of /etc/passwd


def test_mobileconfig_is_a_plist_for_the_address(client: Any, provider: Any) -> None:
    response = client.get("/mobileconfig", {"emailaddress": "juliet@example.org"})

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/x-apple-aspen-config"
    profile = plistlib.loads(response.content)
    payload = profile["PayloadContent"][0]
    assert payload["PayloadType"] == "com.apple.mail.managed"
    assert payload["EmailAddress"] == "juliet@example.org"
    assert payload["IncomingMailServerHostName"] == "imap.example.org"
    assert payload["IncomingMailServerPortNumber"] == 993
    assert payload["IncomingMailServerUseSSL"] is True
    assert payload["OutgoingMailServerHostName"] == "smtp.example.org"
    assert payload["OutgoingMailServerPortNumber"] == 587


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({}, HTTPStatus.BAD_REQUEST),
        ({"emailaddress": "x"}, HTTPStatus.BAD_REQUEST),
        ({"emailaddress": "a@nowhere.example"}, HTTPStatus.NOT_FOUND),
    ],
)
def test_mobileconfig_refuses_bad_queries(
    client: Any, provider: Any, query: dict[str, str], status: HTTPStatus
) -> None:
    assert client.get("/mobileconfig", query).status_code == status


def test_mobileconfig_is_the_same_profile_whatever_the_domain_case(
    client: Any, provider: Any
) -> None:
    lower = client.get("/mobileconfig", {"emailaddress": "juliet@example.org"})
    upper = client.get("/mobileconfig", {"emailaddress": "juliet@EXAMPLE.org"})

    assert plistlib.loads(lower.content) == plistlib.loads(upper.content)


def test_edit_made_by_another_process_is_seen_within_the_check_interval(
    client: Any, provider: Any
) -> None:
    from django.core.cache import cache

    from providers.services import documents

    query = {"emailaddress": "a@example.org"}
    before = client.get("/mail/config-v1.1.xml", query)
    # Another process edits the row (no signal here) and publishes a new catalog version.
    ServerSetting.objects.filter(provider=provider, type="imap").update(port=1993)
    cache.set(documents.VERSION_KEY, "published-by-another-process", timeout=None)

    within_interval = client.get("/mail/config-v1.1.xml", query)
    assert documents._snapshot is not None
    documents._snapshot.checked_at -= documents.VERSION_CHECK_INTERVAL  # time passes
    after_interval = client.get("/mail/config-v1.1.xml", query)

    assert within_interval.content == before.content
    assert b"<port>1993</port>" in after_interval.content
