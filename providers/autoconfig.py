"""Mail-client setup documents: Thunderbird autoconfig, Outlook Autodiscover, Apple profiles."""

from __future__ import annotations

import hashlib
import os
import plistlib
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from lxml import etree

INCOMING_TYPES = frozenset({"imap", "pop3"})
OUTGOING_TYPES = frozenset({"smtp"})
SOCKET_TYPES = frozenset({"SSL", "STARTTLS", "plain"})
# Thunderbird's current names; the deprecated "plain"/"secure" are refused (specs/autoconfig.md).
AUTHENTICATIONS = frozenset(
    {
        "password-cleartext",
        "password-encrypted",
        "NTLM",
        "GSSAPI",
        "OAuth2",
        "client-IP-address",
        "TLS-client-cert",
        "none",
    }
)
PLACEHOLDERS = frozenset({"EMAILADDRESS", "EMAILLOCALPART", "EMAILDOMAIN"})
ERROR_CODES = frozenset({"USER_BACK", "USER_CANCEL", "ERROR"})

AUTODISCOVER_REQUEST_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
)
AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AUTODISCOVER_OUTLOOK_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)

# Fixed namespace for the profile's PayloadUUIDs: the same address always yields the same UUIDs,
# so reinstalling a profile replaces the account instead of adding a second one.
MOBILECONFIG_UUID_NAMESPACE = uuid.UUID("6f0b1c43-58a2-4c2e-9d0e-3b7f6a1e5d21")

# XML 1.0 "Char" production; anything else cannot be carried by a well-formed document.
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PLACEHOLDER = re.compile(r"%([A-Z]+)%")
_EXPANDABLE = re.compile("%(" + "|".join(sorted(PLACEHOLDERS)) + ")%")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True, slots=True)
class Server:
    type: str  # "imap" | "pop3" | "smtp"
    hostname: str  # ASCII (A-label) host name
    port: int  # 1..65535
    socket_type: str  # "SSL" | "STARTTLS" | "plain"
    authentication: str  # one of AUTHENTICATIONS
    username: str  # template with %EMAILADDRESS% %EMAILLOCALPART% %EMAILDOMAIN% (or a literal)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: str  # primary domain, A-label
    domains: tuple[str, ...]  # A-labels, primary first
    display_name: str
    display_short_name: str
    incoming: tuple[Server, ...]  # preference order (imap/pop3)
    outgoing: tuple[Server, ...]  # smtp
    documentation_url: str = ""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str  # the literal login name (replaces the template in every server)
    password: str


class MalformedRequest(ValueError):
    """An Autodiscover request we refuse to read (the view answers 400)."""


@dataclass(frozen=True, slots=True)
class Signer:
    """The operator's certificate and key that sign configuration profiles (CMS, SHA-256)."""

    certificate: x509.Certificate
    private_key: pkcs7.PKCS7PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("the signing key must be an RSA or EC private key")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if self.private_key.public_key().public_bytes(der, spki) != (
            self.certificate.public_key().public_bytes(der, spki)
        ):
            raise ValueError("the signing key does not belong to the certificate")

    @classmethod
    def from_pem_files(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        chain_path: str | os.PathLike[str] | None = None,
    ) -> Signer:
        """Load an unencrypted PEM key and its certificate; extra certificates become the chain."""
        certificates = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("the signing key must be an RSA or EC private key")
        chain = list(certificates[1:])
        if chain_path is not None:
            chain.extend(x509.load_pem_x509_certificates(Path(chain_path).read_bytes()))
        return cls(certificate=certificates[0], private_key=key, chain=tuple(chain))

    def sign(self, content: bytes) -> bytes:
        """Return DER SignedData that embeds `content` byte for byte."""
        builder = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(content)
            .add_signer(self.certificate, self.private_key, hashes.SHA256())
        )
        for certificate in self.chain:
            builder = builder.add_certificate(certificate)
        # Binary: without it the content is canonicalised to CRLF line ends, and the embedded
        # profile would no longer be the plist we built.
        return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def expand_username(template: str, email: str) -> str:
    """Replace %EMAILADDRESS%, %EMAILLOCALPART% and %EMAILDOMAIN% in one pass.

    One pass, so an address that itself contains "%EMAILDOMAIN%" is not expanded twice.
    ValueError if `email` has no "@".
    """
    local, _, domain = _email(email).rpartition("@")
    values = {"EMAILADDRESS": email, "EMAILLOCALPART": local, "EMAILDOMAIN": domain}
    return _EXPANDABLE.sub(lambda match: values[match.group(1)], template)


def etag_for(document: bytes) -> str:
    """Strong ETag for a generated document."""
    return '"' + hashlib.sha256(document).hexdigest()[:32] + '"'


def client_config(info: ProviderInfo, credentials: Credentials | None = None) -> bytes:
    """Thunderbird clientConfig 1.1 for `info`.

    With `credentials`, every server carries the literal username and a <password>, as the
    account provisioner expects after a successful registration. ValueError on a value the
    document cannot carry (see `_check_provider`), or on empty credentials.
    """
    _check_provider(info)
    if credentials is None:
        return _client_config(info, lambda server: server.username, None)
    _text(credentials.username, "username", required=True)
    _text(credentials.password, "password", required=True)
    return _client_config(info, lambda server: credentials.username, credentials.password)


def account_config(info: ProviderInfo, *, email: str, password: str) -> bytes:
    """The clientConfig answering a successful registration of `email` (specs/autoconfig.md).

    Each server's username template is expanded for `email` (so a server that logs in with
    %EMAILLOCALPART% gets the local part), and each server carries `password`. ValueError on
    an empty password or a value the document cannot carry exactly.
    """
    _check_provider(info)
    _email(email)
    _text(password, "password", required=True)
    return _client_config(info, lambda server: expand_username(server.username, email), password)


def xml_safe(value: str) -> bool:
    """True if `value` has only characters an XML 1.0 document can carry."""
    return _XML_ILLEGAL.search(value) is None


def _client_config(
    info: ProviderInfo, username: Callable[[Server], str], password: str | None
) -> bytes:
    root = etree.Element("clientConfig", version="1.1")
    provider = etree.SubElement(root, "emailProvider", id=info.id)
    for domain in info.domains:
        _sub(provider, "domain", domain)
    _sub(provider, "displayName", info.display_name)
    _sub(provider, "displayShortName", info.display_short_name)
    for server in info.incoming:
        _server_element(provider, "incomingServer", server, username(server), password)
    for server in info.outgoing:
        _server_element(provider, "outgoingServer", server, username(server), password)
    if info.documentation_url:
        etree.SubElement(provider, "documentation", url=info.documentation_url)
    return _serialize(root)


def error_document(domain: str, code: str, message: str) -> bytes:
    """The account provisioner's error answer; ValueError on an unknown code."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    _hostname(domain, "domain")
    root = etree.Element("clientConfig", version="1.1")
    etree.SubElement(root, "emailProvider", id=domain)
    _sub(root, "error", _text(message, "message"), code=code)
    return _serialize(root)


def autodiscover_response(info: ProviderInfo, email: str | None) -> bytes:
    """Outlook Autodiscover (POX) answer, one <Protocol> per server, incoming first.

    LoginName is the username template expanded for `email`; it is left out when `email` is
    None and the template needs the address.
    """
    _check_provider(info)
    if email is not None:
        _email(email)
    # Shape: [MS-OXDSCLI] / Microsoft's "Protocol (POX)" page (child order Type, Server, Port,
    # LoginName, SPA, SSL, AuthRequired) and automx2's generators/outlook.py (Encryption after
    # SSL; Encryption overrides SSL for Outlook). SSL stays "on" for STARTTLS because readers
    # that ignore Encryption (Delta Chat's configure/auto_outlook.rs: on -> automatic TLS,
    # off -> plain; Thunderbird, bug 1799635) must not fall back to plaintext.
    # dict[Any, str]: lxml takes None as the default-namespace prefix; lxml-stubs says str only.
    root_ns: dict[Any, str] = {None: AUTODISCOVER_RESPONSE_NS}
    response_ns: dict[Any, str] = {None: AUTODISCOVER_OUTLOOK_NS}
    root = etree.Element(_q(AUTODISCOVER_RESPONSE_NS, "Autodiscover"), nsmap=root_ns)
    response = etree.SubElement(root, _q(AUTODISCOVER_OUTLOOK_NS, "Response"), nsmap=response_ns)
    account = _osub(response, "Account")
    _osub(account, "AccountType", "email")
    _osub(account, "Action", "settings")
    for server in (*info.incoming, *info.outgoing):
        protocol = _osub(account, "Protocol")
        _osub(protocol, "Type", server.type.upper())
        _osub(protocol, "Server", server.hostname)
        _osub(protocol, "Port", str(server.port))
        login_name = _login_name(server.username, email)
        if login_name:
            _osub(protocol, "LoginName", login_name)
        _osub(protocol, "SPA", "off")
        _osub(protocol, "SSL", "off" if server.socket_type == "plain" else "on")
        if server.socket_type != "plain":
            _osub(protocol, "Encryption", "SSL" if server.socket_type == "SSL" else "TLS")
        _osub(protocol, "AuthRequired", "on")
    return _serialize(root)


def parse_autodiscover_request(body: bytes, *, max_bytes: int = 16384) -> str | None:
    """Return the <EMailAddress> of an Outlook Autodiscover request, None if it has none.

    Raises MalformedRequest for a body over `max_bytes`, anything with a DOCTYPE or entity
    declaration, anything not well-formed or deeper than libxml2's default limit (256), and
    a root or namespace other than the Outlook request schema. Never fetches anything.
    """
    if len(body) > max_bytes:
        raise MalformedRequest("request body too large")
    if not body.strip():
        raise MalformedRequest("empty request body")
    # Cheap first gate for the usual UTF-8 body; the docinfo check below also catches a
    # DOCTYPE hidden in another encoding (UTF-16), which this byte scan cannot see.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise MalformedRequest("DOCTYPE and entity declarations are not accepted")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,  # keeps libxml2's depth and size limits
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    try:
        root = etree.fromstring(body, parser)
    except (etree.XMLSyntaxError, ValueError) as error:
        raise MalformedRequest("not well-formed XML") from error
    docinfo: Any = root.getroottree().docinfo  # lxml-stubs lacks DocInfo.doctype
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise MalformedRequest("DOCTYPE and entity declarations are not accepted")
    if root.tag != _q(AUTODISCOVER_REQUEST_NS, "Autodiscover"):
        raise MalformedRequest("not an Outlook Autodiscover request")
    request = root.find(_q(AUTODISCOVER_REQUEST_NS, "Request"))
    if request is None:
        raise MalformedRequest("no Request element")
    address = (request.findtext(_q(AUTODISCOVER_REQUEST_NS, "EMailAddress")) or "").strip()
    # An empty element says no more than an absent one.
    return address or None


def mobileconfig(info: ProviderInfo, email: str, *, signer: Signer | None = None) -> bytes:
    """Apple configuration profile with one com.apple.mail.managed payload for `email`.

    Uses the first IMAP incoming and first SMTP server. ValueError when the provider has
    neither, when a server's authentication has no Apple equivalent, or on a value the plist
    cannot carry exactly. With `signer`, returns the DER CMS SignedData that embeds the plist.
    """
    _check_provider(info)
    _plist_text(_email(email), "email")
    imap = next((s for s in info.incoming if s.type == "imap"), None)
    smtp = next((s for s in info.outgoing if s.type == "smtp"), None)
    if imap is None or smtp is None:
        raise ValueError("a configuration profile needs an IMAP and an SMTP server")
    for value, what in (
        (info.display_name, "display name"),
        (imap.username, "username"),
        (smtp.username, "username"),
    ):
        _plist_text(value, what)

    # Keys from Apple's device-management schema (apple/device-management,
    # mdm/profiles/com.apple.mail.managed.yaml and TopLevel.yaml).
    identifier = ".".join(reversed(info.id.lower().split("."))) + ".mailportal."
    identifier += hashlib.sha256(email.encode()).hexdigest()[:16]
    mail = {
        "EmailAccountDescription": email,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": email,
        "PayloadDisplayName": info.display_name,
        "PayloadIdentifier": identifier + ".mail",
        "PayloadOrganization": info.display_name,
        "PayloadType": "com.apple.mail.managed",
        "PayloadUUID": _payload_uuid(email, "mail"),
        "PayloadVersion": 1,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    for prefix, server in (("IncomingMailServer", imap), ("OutgoingMailServer", smtp)):
        mail[prefix + "Authentication"] = _apple_authentication(server.authentication)
        mail[prefix + "HostName"] = server.hostname
        mail[prefix + "PortNumber"] = server.port
        # Apple has one switch: "true" means TLS, implicit or via STARTTLS on 587/143.
        mail[prefix + "UseSSL"] = server.socket_type != "plain"
        mail[prefix + "Username"] = expand_username(server.username, email)
    profile = {
        "PayloadContent": [mail],
        "PayloadDisplayName": info.display_name,
        "PayloadIdentifier": identifier,
        "PayloadOrganization": info.display_name,
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": _payload_uuid(email, "profile"),
        "PayloadVersion": 1,
    }
    document = plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
    return signer.sign(document) if signer is not None else document


def _check_provider(info: ProviderInfo) -> None:
    """Refuse anything that would make a document our validator (or a client) rejects."""
    _hostname(info.id, "provider id")
    if not info.domains:
        raise ValueError("a provider needs at least one domain")
    for domain in info.domains:
        _hostname(domain, "domain")
    _text(info.display_name, "display name")
    _text(info.display_short_name, "short display name")
    if not info.incoming or not info.outgoing:
        raise ValueError("a provider needs at least one incoming and one outgoing server")
    _check_servers(info.incoming, INCOMING_TYPES)
    _check_servers(info.outgoing, OUTGOING_TYPES)
    if info.documentation_url:
        _text(info.documentation_url, "documentation URL")
        if not info.documentation_url.startswith(("https://", "http://")):
            raise ValueError("the documentation URL must be http(s)")


def _check_servers(servers: Iterable[Server], types: frozenset[str]) -> None:
    for server in servers:
        if server.type not in types:
            raise ValueError(f"server type {server.type!r} not allowed here")
        _hostname(server.hostname, "server host name")
        if isinstance(server.port, bool) or not isinstance(server.port, int):
            raise ValueError("port must be an integer")
        if not 1 <= server.port <= 65535:
            raise ValueError(f"port {server.port} out of range")
        if server.socket_type not in SOCKET_TYPES:
            raise ValueError(f"unknown socket type {server.socket_type!r}")
        if server.authentication not in AUTHENTICATIONS:
            raise ValueError(f"unknown authentication {server.authentication!r}")
        _text(server.username, "username")
        unknown = set(_PLACEHOLDER.findall(server.username)) - PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)} in username template")


def _text(value: str, what: str, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text")
    if required and not value:
        raise ValueError(f"{what} must not be empty")
    if _XML_ILLEGAL.search(value):
        raise ValueError(f"{what} contains a character XML cannot carry")
    return value


def _email(value: str) -> str:
    local, at, domain = _text(value, "email").rpartition("@")
    if not at or not local or not domain:
        raise ValueError("not an email address")
    return value


def _plist_text(value: str, what: str) -> str:
    # plistlib rewrites CR and CRLF to LF on output, so a CR would not survive the round trip.
    if "\r" in _text(value, what):
        raise ValueError(f"{what} contains a carriage return")
    return value


def _hostname(value: str, what: str) -> str:
    # ASCII only: Thunderbird's config sanitizer rejects U-labels (specs/autoconfig.md).
    if not isinstance(value, str) or not value.isascii() or len(value) > 253:
        raise ValueError(f"{what} must be an ASCII host name")
    if not all(_LABEL.match(label) for label in value.split(".")):
        raise ValueError(f"{what} must be an ASCII host name")
    return value


def _login_name(template: str, email: str | None) -> str | None:
    if email is not None:
        return expand_username(template, email)
    return None if _EXPANDABLE.search(template) else template


def _apple_authentication(authentication: str) -> str:
    mapping = {
        "password-cleartext": "EmailAuthPassword",
        "password-encrypted": "EmailAuthCRAMMD5",
        "NTLM": "EmailAuthNTLM",
        "none": "EmailAuthNone",
        "client-IP-address": "EmailAuthNone",
    }
    try:
        return mapping[authentication]
    except KeyError:
        raise ValueError(f"{authentication!r} has no Apple Mail equivalent") from None


def _payload_uuid(email: str, kind: str) -> str:
    return str(uuid.uuid5(MOBILECONFIG_UUID_NAMESPACE, f"{kind}:{email}")).upper()


def _server_element(
    parent: etree._Element, tag: str, server: Server, username: str, password: str | None
) -> None:
    element = etree.SubElement(parent, tag, type=server.type)
    _sub(element, "hostname", server.hostname)
    _sub(element, "port", str(server.port))
    _sub(element, "socketType", server.socket_type)
    _sub(element, "authentication", server.authentication)
    _sub(element, "username", _text(username, "username"))
    if password is not None:
        _sub(element, "password", password)


def _sub(parent: etree._Element, tag: str, text: str, **attributes: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attributes)
    element.text = text
    return element


def _osub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, _q(AUTODISCOVER_OUTLOOK_NS, tag))
    element.text = text
    return element


def _q(namespace: str, tag: str) -> str:
    return f"{{{namespace}}}{tag}"


def _serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
