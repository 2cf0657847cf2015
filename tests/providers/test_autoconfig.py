"""Tests for providers.autoconfig: the setup documents we serve and the Autodiscover parser."""

from __future__ import annotations

import os
import plistlib
import select
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import defusedxml.ElementTree as DET
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import autoconfig
from providers.autoconfig import Credentials, MalformedRequest, ProviderInfo, Server, Signer

DATA = Path(__file__).parent / "data"
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
CANARY = "s3cret & <more>"
HOSTILE = "<b> & \"quoted\" 'single' ]]> Grüße 📬"
XML_ILLEGAL = ["\x00", "\x08", "\x0b", "\x0c", "\x1f", "\ud800", "\udfff", "\ufffe", "\uffff"]


def make_server(**overrides: object) -> Server:
    fields: dict[str, object] = {
        "type": "imap",
        "hostname": "imap.example.org",
        "port": 993,
        "socket_type": "SSL",
        "authentication": "password-cleartext",
        "username": "%EMAILADDRESS%",
    }
    fields.update(overrides)
    return Server(**fields)  # type: ignore[arg-type]


def make_provider(**overrides: object) -> ProviderInfo:
    fields: dict[str, object] = {
        "id": "example.org",
        "domains": ("example.org", "xn--bcher-kva.example"),
        "display_name": "Example Mail",
        "display_short_name": "Example",
        "incoming": (
            make_server(),
            make_server(
                type="pop3", hostname="pop.example.org", port=995, username="%EMAILLOCALPART%"
            ),
        ),
        "outgoing": (
            make_server(type="smtp", hostname="smtp.example.org", port=587, socket_type="STARTTLS"),
        ),
        "documentation_url": "https://example.org/help",
    }
    fields.update(overrides)
    return ProviderInfo(**fields)  # type: ignore[arg-type]


def assert_golden(name: str, document: bytes) -> None:
    path = DATA / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_bytes(document)
    assert document == path.read_bytes()


def servers_of(document: bytes) -> list[dict[str, str | None]]:
    provider = DET.fromstring(document).find("emailProvider")
    assert provider is not None
    return [
        {
            "tag": server.tag,
            "type": server.get("type"),
            **{child.tag: child.text for child in server},
        }
        for server in provider
        if server.tag in {"incomingServer", "outgoingServer"}
    ]


def protocols_of(document: bytes) -> list[dict[str, str | None]]:
    root = DET.fromstring(document)
    assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
    account = root.find(f"{{{OUTLOOK_NS}}}Response/{{{OUTLOOK_NS}}}Account")
    assert account is not None
    assert account.findtext(f"{{{OUTLOOK_NS}}}AccountType") == "email"
    assert account.findtext(f"{{{OUTLOOK_NS}}}Action") == "settings"
    return [
        {child.tag.removeprefix(f"{{{OUTLOOK_NS}}}"): child.text for child in protocol}
        for protocol in account.findall(f"{{{OUTLOOK_NS}}}Protocol")
    ]


def request_body(email: str | None = "alice@example.org", *, encoding: str = "utf-8") -> bytes:
    address = "" if email is None else f"<EMailAddress>{email}</EMailAddress>"
    return (
        f'<?xml version="1.0" encoding="{encoding}"?>\n'
        f'<Autodiscover xmlns="{REQUEST_NS}"><Request>{address}'
        f"<AcceptableResponseSchema>{OUTLOOK_NS}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode(encoding)


# --- clientConfig -------------------------------------------------------------------------


def test_client_config_lists_domains_names_and_servers_in_order() -> None:
    document = autoconfig.client_config(make_provider())
    root = DET.fromstring(document)
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == "example.org"
    assert [d.text for d in provider.findall("domain")] == ["example.org", "xn--bcher-kva.example"]
    assert provider.findtext("displayName") == "Example Mail"
    assert provider.findtext("displayShortName") == "Example"
    documentation = provider.find("documentation")
    assert documentation is not None
    assert documentation.get("url") == "https://example.org/help"
    assert servers_of(document) == [
        {
            "tag": "incomingServer",
            "type": "imap",
            "hostname": "imap.example.org",
            "port": "993",
            "socketType": "SSL",
            "authentication": "password-cleartext",
            "username": "%EMAILADDRESS%",
        },
        {
            "tag": "incomingServer",
            "type": "pop3",
            "hostname": "pop.example.org",
            "port": "995",
            "socketType": "SSL",
            "authentication": "password-cleartext",
            "username": "%EMAILLOCALPART%",
        },
        {
            "tag": "outgoingServer",
            "type": "smtp",
            "hostname": "smtp.example.org",
            "port": "587",
            "socketType": "STARTTLS",
            "authentication": "password-cleartext",
            "username": "%EMAILADDRESS%",
        },
    ]


def test_client_config_matches_golden_document() -> None:
    document = autoconfig.client_config(make_provider())
    assert document.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n")
    assert_golden("config-v1.1.xml", document)


def test_client_config_fills_every_server_when_credentials_given() -> None:
    credentials = Credentials("alice@example.org", CANARY)
    document = autoconfig.client_config(make_provider(), credentials)
    servers = servers_of(document)
    assert [(s["tag"], s["type"]) for s in servers] == [
        ("incomingServer", "imap"),
        ("incomingServer", "pop3"),
        ("outgoingServer", "smtp"),
    ]
    for server in servers:
        assert server["username"] == "alice@example.org"
        assert server["password"] == CANARY
    assert_golden("config-v1.1-credentials.xml", document)


def test_client_config_documents_pass_our_validator(
    validate_clientconfig: Callable[[bytes], list[str]],
) -> None:
    credentials = Credentials("alice@example.org", CANARY)
    for document in (
        autoconfig.client_config(make_provider()),
        autoconfig.client_config(make_provider(), credentials),
        autoconfig.client_config(make_provider(documentation_url="", incoming=(make_server(),))),
        (DATA / "config-v1.1.xml").read_bytes(),
    ):
        assert validate_clientconfig(document) == []


def test_client_config_round_trips_hostile_values(
    validate_clientconfig: Callable[[bytes], list[str]],
) -> None:
    info = make_provider(
        display_name=HOSTILE,
        display_short_name="]]>&<",
        incoming=(make_server(username=f"%EMAILLOCALPART%{HOSTILE}"),),
    )
    document = autoconfig.client_config(info)
    provider = DET.fromstring(document).find("emailProvider")
    assert provider is not None
    assert provider.findtext("displayName") == HOSTILE
    assert provider.findtext("displayShortName") == "]]>&<"
    assert servers_of(document)[0]["username"] == f"%EMAILLOCALPART%{HOSTILE}"
    assert "Grüße 📬".encode() in document  # UTF-8 as declared, not character references
    assert validate_clientconfig(document) == []

    credentials = Credentials(username=f"ü{HOSTILE}", password=f"\t{HOSTILE}\r\n ")
    for server in servers_of(autoconfig.client_config(info, credentials)):
        assert server["username"] == credentials.username
        assert server["password"] == credentials.password


def _xml_char(char: str) -> bool:
    point = ord(char)
    return (
        char in "\t\n\r"
        or 0x20 <= point <= 0xD7FF
        or 0xE000 <= point <= 0xFFFD
        or 0x10000 <= point <= 0x10FFFF
    )


xml_text = st.text(
    st.one_of(
        st.sampled_from(list("&<>\"']]>%\r\n\t ")),
        st.characters(exclude_categories=["Cs"]).filter(_xml_char),
    ),
    min_size=1,
)


@settings(database=None, deadline=None, max_examples=300)
@given(username=xml_text, password=xml_text)
def test_client_config_round_trips_any_credentials(username: str, password: str) -> None:
    document = autoconfig.client_config(make_provider(), Credentials(username, password))
    servers = servers_of(document)
    assert len(servers) == 3
    for server in servers:
        assert server["username"] == username
        assert server["password"] == password


@pytest.mark.parametrize("char", XML_ILLEGAL)
@pytest.mark.parametrize(
    "build",
    [
        lambda bad: autoconfig.client_config(make_provider(display_name=f"a{bad}")),
        lambda bad: autoconfig.client_config(make_provider(display_short_name=bad)),
        lambda bad: autoconfig.client_config(
            make_provider(incoming=(make_server(username=f"%EMAILADDRESS%{bad}"),))
        ),
        lambda bad: autoconfig.client_config(make_provider(), Credentials(f"u{bad}", "pw")),
        lambda bad: autoconfig.client_config(make_provider(), Credentials("u", f"p{bad}w")),
        lambda bad: autoconfig.error_document("example.org", "ERROR", f"oops{bad}"),
        lambda bad: autoconfig.autodiscover_response(make_provider(), f"a{bad}@example.org"),
        lambda bad: autoconfig.mobileconfig(make_provider(), f"a{bad}@example.org"),
        lambda bad: autoconfig.mobileconfig(make_provider(display_name=bad), "a@example.org"),
    ],
    ids=[
        "display_name",
        "display_short_name",
        "username_template",
        "credentials_username",
        "credentials_password",
        "error_message",
        "autodiscover_email",
        "mobileconfig_email",
        "mobileconfig_display_name",
    ],
)
def test_builders_raise_value_error_on_xml_illegal_character(build: object, char: str) -> None:
    with pytest.raises(ValueError):
        build(char)  # type: ignore[operator]


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "bücher.example"},
        {"domains": ()},
        {"domains": ("example.org", "bücher.example")},
        {"incoming": ()},
        {"outgoing": ()},
        {"incoming": (make_server(port=0),)},
        {"incoming": (make_server(port=65536),)},
        {"incoming": (make_server(hostname="imap.bücher.example"),)},
        {"incoming": (make_server(hostname="imap example.org"),)},
        {"incoming": (make_server(socket_type="TLS"),)},
        {"incoming": (make_server(authentication="plain"),)},
        {"incoming": (make_server(type="smtp"),)},
        {"outgoing": (make_server(type="imap"),)},
        {"incoming": (make_server(username="%EMAILUSER%"),)},
        {"documentation_url": "javascript:alert(1)"},
    ],
    ids=lambda overrides: repr(overrides)[:40],
)
def test_client_config_raises_value_error_on_invalid_provider(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        autoconfig.client_config(make_provider(**overrides))


def test_client_config_raises_value_error_on_empty_credentials() -> None:
    with pytest.raises(ValueError):
        autoconfig.client_config(make_provider(), Credentials("", "pw"))
    with pytest.raises(ValueError):
        autoconfig.client_config(make_provider(), Credentials("alice", ""))


# --- our validator can fail ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'version="1.1"', b'version="1.0"'),
        (b'id="example.org"', 'id="bücher.example"'.encode()),
        (b"domain>", b"realm>"),
        (b"<displayName>Example Mail</displayName>", b""),
        (b"<port>993</port>", b"<port>0</port>"),
        (b"<port>995</port>", b"<port>65536</port>"),
        (b"<port>587</port>", b"<port>twenty-five</port>"),
        (b"<socketType>STARTTLS</socketType>", b"<socketType>TLS</socketType>"),
        (b"<authentication>password-cleartext", b"<authentication>plain"),
        (b"<username>%EMAILLOCALPART%", b"<username>%EMAILUSER%"),
        (b'<outgoingServer type="smtp">', b'<outgoingServer type="imap">'),
        (b'<incomingServer type="pop3">', b'<incomingServer type="exchange">'),
        (b"<hostname>imap.example.org", b"<hostname>-bad-.example.org"),
        (b'url="https://example.org/help"', b'url="javascript:alert(1)"'),
    ],
)
def test_validator_reports_problem_when_document_is_broken(
    old: bytes, new: bytes, validate_clientconfig: Callable[[bytes], list[str]]
) -> None:
    golden = (DATA / "config-v1.1.xml").read_bytes()
    broken = golden.replace(old, new)
    assert broken != golden
    assert validate_clientconfig(broken) != []


def test_validator_reports_problem_when_document_is_not_xml(
    validate_clientconfig: Callable[[bytes], list[str]],
) -> None:
    assert validate_clientconfig(b"<clientConfig version='1.1'>") != []
    assert validate_clientconfig(b'<!DOCTYPE x [<!ENTITY a "b">]><clientConfig/>') != []


# --- error document -----------------------------------------------------------------------


@pytest.mark.parametrize("code", ["USER_BACK", "USER_CANCEL", "ERROR"])
def test_error_document_carries_code_and_message(
    code: str, validate_clientconfig: Callable[[bytes], list[str]]
) -> None:
    document = autoconfig.error_document("example.org", code, HOSTILE)
    root = DET.fromstring(document)
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == "example.org"
    assert len(provider) == 0
    assert [(child.tag, child.get("code"), child.text) for child in root] == [
        ("emailProvider", None, None),
        ("error", code, HOSTILE),
    ]
    assert validate_clientconfig(document) == []


def test_error_document_raises_value_error_on_unknown_code() -> None:
    with pytest.raises(ValueError):
        autoconfig.error_document("example.org", "USER_QUIT", "bye")


def test_validator_reports_unknown_error_code(
    validate_clientconfig: Callable[[bytes], list[str]],
) -> None:
    broken = autoconfig.error_document("example.org", "ERROR", "x").replace(
        b'code="ERROR"', b'code="NOPE"'
    )
    assert validate_clientconfig(broken) == ["error code 'NOPE' unknown"]


# --- Autodiscover response ----------------------------------------------------------------


def test_autodiscover_response_lists_every_server_in_order() -> None:
    document = autoconfig.autodiscover_response(make_provider(), "alice@xn--bcher-kva.example")
    assert protocols_of(document) == [
        {
            "Type": "IMAP",
            "Server": "imap.example.org",
            "Port": "993",
            "LoginName": "alice@xn--bcher-kva.example",
            "SPA": "off",
            "SSL": "on",
            "Encryption": "SSL",
            "AuthRequired": "on",
        },
        {
            "Type": "POP3",
            "Server": "pop.example.org",
            "Port": "995",
            "LoginName": "alice",
            "SPA": "off",
            "SSL": "on",
            "Encryption": "SSL",
            "AuthRequired": "on",
        },
        {
            "Type": "SMTP",
            "Server": "smtp.example.org",
            "Port": "587",
            "LoginName": "alice@xn--bcher-kva.example",
            "SPA": "off",
            "SSL": "on",
            "Encryption": "TLS",
            "AuthRequired": "on",
        },
    ]
    assert_golden("autodiscover.xml", document)


def test_autodiscover_response_turns_ssl_off_without_encryption_when_plain() -> None:
    info = make_provider(incoming=(make_server(port=143, socket_type="plain"),))
    [imap, _smtp] = protocols_of(autoconfig.autodiscover_response(info, "a@example.org"))
    assert imap["SSL"] == "off"
    assert "Encryption" not in imap


def test_autodiscover_response_omits_login_name_when_address_unknown() -> None:
    protocols = protocols_of(autoconfig.autodiscover_response(make_provider(), None))
    assert [p["Type"] for p in protocols] == ["IMAP", "POP3", "SMTP"]
    assert all("LoginName" not in p for p in protocols)


def test_autodiscover_response_keeps_literal_login_name_when_address_unknown() -> None:
    info = make_provider(incoming=(make_server(username="shared-login"),))
    [imap, smtp] = protocols_of(autoconfig.autodiscover_response(info, None))
    assert imap["LoginName"] == "shared-login"
    assert "LoginName" not in smtp


def test_autodiscover_response_round_trips_hostile_values() -> None:
    email = "o'brien+<&>\"]]>@example.org"
    info = make_provider(incoming=(make_server(username=f"{HOSTILE}/%EMAILADDRESS%"),))
    [imap, smtp] = protocols_of(autoconfig.autodiscover_response(info, email))
    assert imap["LoginName"] == f"{HOSTILE}/{email}"
    assert smtp["LoginName"] == email


def test_autodiscover_response_raises_value_error_on_non_address() -> None:
    with pytest.raises(ValueError):
        autoconfig.autodiscover_response(make_provider(), "no-at-sign")


# --- Autodiscover request parser ----------------------------------------------------------


def test_parse_autodiscover_request_returns_address_from_outlook_request() -> None:
    assert autoconfig.parse_autodiscover_request(request_body()) == "alice@example.org"
    assert autoconfig.parse_autodiscover_request(
        request_body(" bob@example.org\n", encoding="utf-16")
    ) == ("bob@example.org")


def test_parse_autodiscover_request_returns_none_when_address_absent_or_empty() -> None:
    assert autoconfig.parse_autodiscover_request(request_body(None)) is None
    assert autoconfig.parse_autodiscover_request(request_body("  ")) is None


def _in_encoding(text: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return text.encode()
    # UTF-16 hides "<!DOCTYPE" from a byte scan, so these reach the parser's own guards.
    return text.replace('encoding="utf-8"', 'encoding="UTF-16"').encode("utf-16")


BILLION_LAUGHS = (
    '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE Autodiscover [\n'
    '<!ENTITY lol0 "lol">\n'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(1, 10))
    + f']>\n<Autodiscover xmlns="{REQUEST_NS}"><Request>'
    "<EMailAddress>&lol9;</EMailAddress></Request></Autodiscover>"
)
FILE_ENTITY = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<!DOCTYPE Autodiscover [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    f'<Autodiscover xmlns="{REQUEST_NS}"><Request>'
    "<EMailAddress>&xxe;</EMailAddress></Request></Autodiscover>"
)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("text", [BILLION_LAUGHS, FILE_ENTITY], ids=["billion_laughs", "file"])
def test_parse_autodiscover_request_refuses_entities(text: str, encoding: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        autoconfig.parse_autodiscover_request(_in_encoding(text, encoding))
    assert "root:" not in str(caught.value)
    assert "lollol" not in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE Autodiscover [<!ENTITY ext SYSTEM "http://127.0.0.1:{port}/entity">]>',
        '<!DOCTYPE Autodiscover SYSTEM "http://127.0.0.1:{port}/external.dtd">',
        '<!DOCTYPE Autodiscover [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p.dtd"> %p;]>',
    ],
    ids=["general_entity", "external_subset", "parameter_entity"],
)
def test_parse_autodiscover_request_opens_no_connection_for_external_reference(
    doctype: str, encoding: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        text = (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            + doctype.format(port=port)
            + f'\n<Autodiscover xmlns="{REQUEST_NS}"><Request>'
            "<EMailAddress>a@example.org&ext;</EMailAddress></Request></Autodiscover>"
        )
        with pytest.raises(MalformedRequest):
            autoconfig.parse_autodiscover_request(_in_encoding(text, encoding))
        readable, _, _ = select.select([listener], [], [], 0.5)
        assert readable == [], "the parser connected to the entity URL"


def test_parse_autodiscover_request_refuses_deep_nesting() -> None:
    depth = 10_000
    body = request_body("<a>" * depth + "a@example.org" + "</a>" * depth)
    with pytest.raises(MalformedRequest):
        autoconfig.parse_autodiscover_request(body)
    # With the size cap lifted, libxml2's depth limit still refuses it.
    with pytest.raises(MalformedRequest):
        autoconfig.parse_autodiscover_request(body, max_bytes=len(body))


def test_parse_autodiscover_request_refuses_body_over_size_limit() -> None:
    body = request_body()
    padded = body + b" " * (16384 - len(body) + 1)
    with pytest.raises(MalformedRequest):
        autoconfig.parse_autodiscover_request(padded)
    assert autoconfig.parse_autodiscover_request(padded[:-1]) == "alice@example.org"
    with pytest.raises(MalformedRequest):
        autoconfig.parse_autodiscover_request(body, max_bytes=len(body) - 1)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"  \r\n",
        b"hello",
        b"<Autodiscover",
        b"\xff\xfe\x00garbage",
        b"<Autodiscover><Request><EMailAddress>a@example.org</EMailAddress></Request></Autodiscover>",
        request_body().replace(b"outlook/requestschema", b"mobilesync/requestschema"),
        request_body()
        .replace(b"<Autodiscover ", b"<Discover ")
        .replace(b"</Autodiscover>", b"</Discover>"),
        f'<Autodiscover xmlns="{REQUEST_NS}"/>'.encode(),
        (
            f'<Autodiscover xmlns="{REQUEST_NS}"><EMailAddress>a@b</EMailAddress></Autodiscover>'
        ).encode(),
    ],
    ids=[
        "empty",
        "whitespace",
        "not_xml",
        "truncated",
        "bad_bytes",
        "no_namespace",
        "activesync_namespace",
        "wrong_root",
        "no_request",
        "address_outside_request",
    ],
)
def test_parse_autodiscover_request_refuses_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        autoconfig.parse_autodiscover_request(body)


def test_malformed_request_is_a_value_error() -> None:
    assert issubclass(MalformedRequest, ValueError)


# --- mobileconfig -------------------------------------------------------------------------


def test_mobileconfig_carries_provider_imap_and_smtp_settings() -> None:
    profile = plistlib.loads(autoconfig.mobileconfig(make_provider(), "alice@example.org"))
    [mail] = profile["PayloadContent"]
    incoming = {key: value for key, value in mail.items() if key.startswith("Incoming")}
    outgoing = {key: value for key, value in mail.items() if key.startswith("Outgoing")}
    assert incoming == {
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": "imap.example.org",
        "IncomingMailServerPortNumber": 993,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": "alice@example.org",
    }
    assert outgoing == {
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": "smtp.example.org",
        "OutgoingMailServerPortNumber": 587,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": "alice@example.org",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    assert "IncomingPassword" not in mail


def test_mobileconfig_holds_one_mail_payload_for_first_imap_and_smtp() -> None:
    info = make_provider(
        incoming=(
            make_server(type="pop3", hostname="pop.example.org", port=995),
            make_server(port=143, socket_type="STARTTLS", username="%EMAILLOCALPART%"),
            make_server(hostname="imap2.example.org"),
        )
    )
    profile = plistlib.loads(autoconfig.mobileconfig(info, "alice@example.org"))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadDisplayName"] == "Example Mail"
    assert profile["PayloadOrganization"] == "Example Mail"
    assert profile["PayloadIdentifier"].startswith("org.example.mailportal.")
    [mail] = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["PayloadIdentifier"] == profile["PayloadIdentifier"] + ".mail"
    assert {key: value for key, value in mail.items() if not key.startswith("Payload")} == {
        "EmailAccountDescription": "alice@example.org",
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": "alice@example.org",
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": "imap.example.org",
        "IncomingMailServerPortNumber": 143,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": "alice",
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": "smtp.example.org",
        "OutgoingMailServerPortNumber": 587,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": "alice@example.org",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }


def test_mobileconfig_payload_uuids_are_stable_per_address() -> None:
    def uuids(email: str) -> tuple[str, str]:
        profile = plistlib.loads(autoconfig.mobileconfig(make_provider(), email))
        return profile["PayloadUUID"], profile["PayloadContent"][0]["PayloadUUID"]

    first = uuids("alice@example.org")
    assert uuids("alice@example.org") == first
    assert autoconfig.mobileconfig(make_provider(), "alice@example.org") == (
        autoconfig.mobileconfig(make_provider(), "alice@example.org")
    )
    other = uuids("bob@example.org")
    assert first[0] != first[1]
    assert set(first).isdisjoint(other)
    assert all(uuid.UUID(value).version == 5 for value in (*first, *other))


def test_mobileconfig_round_trips_hostile_values() -> None:
    email = "o'brien+<&>\"]]>😀@example.org"
    info = make_provider(
        display_name=HOSTILE, incoming=(make_server(username=f"{HOSTILE}%EMAILLOCALPART%"),)
    )
    profile = plistlib.loads(autoconfig.mobileconfig(info, email))
    [mail] = profile["PayloadContent"]
    assert profile["PayloadDisplayName"] == HOSTILE
    assert mail["EmailAddress"] == email
    assert mail["IncomingMailServerUsername"] == f"{HOSTILE}o'brien+<&>\"]]>😀"


def test_mobileconfig_raises_value_error_without_imap_server() -> None:
    info = make_provider(incoming=(make_server(type="pop3", port=995),))
    with pytest.raises(ValueError):
        autoconfig.mobileconfig(info, "alice@example.org")


@pytest.mark.parametrize("authentication", ["OAuth2", "GSSAPI", "TLS-client-cert"])
def test_mobileconfig_raises_value_error_when_authentication_has_no_apple_equivalent(
    authentication: str,
) -> None:
    info = make_provider(incoming=(make_server(authentication=authentication),))
    with pytest.raises(ValueError):
        autoconfig.mobileconfig(info, "alice@example.org")


def test_mobileconfig_raises_value_error_on_carriage_return() -> None:
    # plistlib would silently turn it into a line feed.
    with pytest.raises(ValueError):
        autoconfig.mobileconfig(make_provider(display_name="a\rb"), "alice@example.org")


def _self_signed(tmp_path: Path) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailportal test signer")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "signer.pem"
    key_path = tmp_path / "signer.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, certificate


def test_mobileconfig_signed_is_der_pkcs7_embedding_the_plist(tmp_path: Path) -> None:
    cert_path, key_path, certificate = _self_signed(tmp_path)
    signer = Signer.from_pem_files(cert_path, key_path)
    unsigned = autoconfig.mobileconfig(make_provider(), "alice@example.org")
    signed = autoconfig.mobileconfig(make_provider(), "alice@example.org", signer=signer)

    assert signed[0] == 0x30  # DER SEQUENCE, not PEM or S/MIME text
    assert unsigned in signed  # attached, not detached, and byte for byte
    assert pkcs7.load_der_pkcs7_certificates(signed) == [certificate]

    openssl = shutil.which("openssl")
    if openssl is None:
        # The independent verifier is part of the proof: a missing one fails in CI.
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail("openssl is required (REQUIRE_SERVICES=1) to verify the signature")
        pytest.skip("openssl is not on PATH: signature not verified")
    signed_path = tmp_path / "profile.mobileconfig"
    signed_path.write_bytes(signed)
    verified = subprocess.run(
        [openssl, "smime", "-verify", "-noverify", "-inform", "DER", "-in", str(signed_path)],
        capture_output=True,
        check=True,
    )
    assert verified.stdout == unsigned

    tampered_path = tmp_path / "tampered.mobileconfig"
    tampered_path.write_bytes(signed.replace(b"alice@example.org", b"alice@example.net"))
    refused = subprocess.run(
        [openssl, "smime", "-verify", "-noverify", "-inform", "DER", "-in", str(tampered_path)],
        capture_output=True,
        check=False,
    )
    assert refused.returncode != 0


def test_signer_from_pem_files_adds_chain_certificates(tmp_path: Path) -> None:
    cert_path, key_path, certificate = _self_signed(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, _, intermediate = _self_signed(other_dir)
    chain_path = tmp_path / "chain.pem"
    chain_path.write_bytes(intermediate.public_bytes(serialization.Encoding.PEM))
    signer = Signer.from_pem_files(cert_path, key_path, chain_path)
    assert signer.certificate == certificate
    assert signer.chain == (intermediate,)
    signed = autoconfig.mobileconfig(make_provider(), "alice@example.org", signer=signer)
    assert set(pkcs7.load_der_pkcs7_certificates(signed)) == {certificate, intermediate}


def test_signer_raises_value_error_when_key_does_not_match_certificate(tmp_path: Path) -> None:
    _, _, certificate = _self_signed(tmp_path)
    with pytest.raises(ValueError):
        Signer(certificate=certificate, private_key=ec.generate_private_key(ec.SECP256R1()))


# --- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%EMAILADDRESS%", "alice@example.org"),
        ("%EMAILLOCALPART%", "alice"),
        ("%EMAILDOMAIN%", "example.org"),
        ("x-%EMAILLOCALPART%@%EMAILDOMAIN%", "x-alice@example.org"),
        ("literal", "literal"),
        ("%REALNAME%", "%REALNAME%"),
    ],
)
def test_expand_username_replaces_placeholders(template: str, expected: str) -> None:
    assert autoconfig.expand_username(template, "alice@example.org") == expected


def test_expand_username_does_not_expand_placeholders_inside_the_address() -> None:
    email = '"%EMAILDOMAIN%"@example.org'
    assert autoconfig.expand_username("%EMAILLOCALPART%", email) == '"%EMAILDOMAIN%"'


def test_expand_username_raises_value_error_without_at_sign() -> None:
    with pytest.raises(ValueError):
        autoconfig.expand_username("%EMAILADDRESS%", "alice")


def test_etag_for_is_strong_quoted_sha256_prefix() -> None:
    # sha256(b"document") begins 43cc23fa52b87b4cc1d02b5b11415415
    assert autoconfig.etag_for(b"document") == '"43cc23fa52b87b4cc1d02b5b11415415"'
    assert autoconfig.etag_for(b"document2") != autoconfig.etag_for(b"document")


# ----- the answer to a successful registration (account_config) ----------------------------


def test_account_config_expands_each_servers_username_and_adds_the_password() -> None:
    document = autoconfig.account_config(
        make_provider(), email="juliet@example.org", password=CANARY
    )

    root = DET.fromstring(document)
    servers = [*root.iter("incomingServer"), *root.iter("outgoingServer")]
    assert [(s.get("type"), s.findtext("username"), s.findtext("password")) for s in servers] == [
        ("imap", "juliet@example.org", CANARY),
        ("pop3", "juliet", CANARY),
        ("smtp", "juliet@example.org", CANARY),
    ]


@pytest.mark.parametrize(
    ("email", "password"),
    [("not-an-address", "pw"), ("juliet@example.org", ""), ("juliet@example.org", "p\x00w")],
)
def test_account_config_raises_value_error_on_unusable_input(email: str, password: str) -> None:
    with pytest.raises(ValueError):
        autoconfig.account_config(make_provider(), email=email, password=password)


@pytest.mark.parametrize(
    ("value", "safe"),
    [("ok & <fine> ]]> 🙂", True), ("tab\tok", True), ("nul\x00", False), ("\ufffe", False)],
)
def test_xml_safe_tells_what_a_document_can_carry(value: str, safe: bool) -> None:
    assert autoconfig.xml_safe(value) is safe
