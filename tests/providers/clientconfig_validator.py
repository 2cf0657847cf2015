"""Our own checker for clientConfig 1.1 documents (specs/autoconfig.md, "Our own validator")."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

SOCKET_TYPES = frozenset({"SSL", "STARTTLS", "plain"})
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
PLACEHOLDERS = frozenset({"EMAILADDRESS", "EMAILLOCALPART", "EMAILDOMAIN", "REALNAME"})
ERROR_CODES = frozenset({"USER_BACK", "USER_CANCEL", "ERROR"})

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PLACEHOLDER = re.compile(r"%([A-Za-z0-9_]+)%")


def is_ascii_hostname(value: str | None) -> bool:
    """True for an LDH host name of at most 253 characters (A-labels, no trailing dot)."""
    if not value or not value.isascii() or len(value) > 253:
        return False
    return all(_LABEL.match(label) for label in value.split("."))


def validate(document: bytes) -> list[str]:
    """Return the problems found in a clientConfig document; an empty list means valid.

    Accepts both the provider document and the account provisioner's error document.
    """
    try:
        root = DET.fromstring(document)
    except (ET.ParseError, DefusedXmlException) as error:
        return [f"not parseable: {error}"]
    problems: list[str] = []
    if root.tag != "clientConfig":
        problems.append(f"root is <{root.tag}>, not <clientConfig>")
    if root.get("version") != "1.1":
        problems.append(f"version is {root.get('version')!r}, not '1.1'")
    providers = root.findall("emailProvider")
    if len(providers) != 1:
        return [*problems, f"{len(providers)} <emailProvider> elements, expected 1"]
    provider = providers[0]
    if not is_ascii_hostname(provider.get("id")):
        problems.append(f"emailProvider id {provider.get('id')!r} is not an ASCII host name")
    error_element = root.find("error")
    if error_element is not None:
        if error_element.get("code") not in ERROR_CODES:
            problems.append(f"error code {error_element.get('code')!r} unknown")
        return problems
    problems.extend(_provider_problems(provider))
    return problems


def _provider_problems(provider: ET.Element) -> list[str]:
    problems: list[str] = []
    domains = provider.findall("domain")
    if not domains:
        problems.append("no <domain>")
    problems.extend(
        f"domain {d.text!r} is not an ASCII host name"
        for d in domains
        if not is_ascii_hostname(d.text)
    )
    for tag in ("displayName", "displayShortName"):
        if provider.find(tag) is None:
            problems.append(f"no <{tag}>")
    incoming = provider.findall("incomingServer")
    outgoing = provider.findall("outgoingServer")
    if not incoming:
        problems.append("no <incomingServer>")
    if not outgoing:
        problems.append("no <outgoingServer>")
    for server in incoming:
        if server.get("type") not in {"imap", "pop3"}:
            problems.append(f"incomingServer type {server.get('type')!r} not imap/pop3")
        problems.extend(_server_problems(server))
    for server in outgoing:
        if server.get("type") != "smtp":
            problems.append(f"outgoingServer type {server.get('type')!r} not smtp")
        problems.extend(_server_problems(server))
    documentation = provider.find("documentation")
    if documentation is not None and not (documentation.get("url") or "").startswith(
        ("https://", "http://")
    ):
        problems.append("documentation url is not http(s)")
    # Placeholders are substituted by the client in any text; a password is never a template.
    for element in provider.iter():
        if element.tag == "password" or not element.text:
            continue
        problems.extend(
            f"unknown placeholder %{name}% in <{element.tag}>"
            for name in _PLACEHOLDER.findall(element.text)
            if name not in PLACEHOLDERS
        )
    return problems


def _server_problems(server: ET.Element) -> list[str]:
    where = f"{server.tag}[{server.get('type')}]"
    problems: list[str] = []
    if not is_ascii_hostname(server.findtext("hostname")):
        problems.append(f"{where}: hostname {server.findtext('hostname')!r} invalid")
    port = server.findtext("port") or ""
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        problems.append(f"{where}: port {port!r} not in 1-65535")
    if server.findtext("socketType") not in SOCKET_TYPES:
        problems.append(f"{where}: socketType {server.findtext('socketType')!r} not allowed")
    methods = [element.text for element in server.findall("authentication")]
    if not methods:
        problems.append(f"{where}: no <authentication>")
    problems.extend(
        f"{where}: authentication {method!r} not allowed"
        for method in methods
        if method not in AUTHENTICATIONS
    )
    return problems
