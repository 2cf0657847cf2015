"""Pure: domain and host names as we store them (IDNA 2008 A-labels) and show them (U-labels)."""

from __future__ import annotations

import ipaddress
import re

import idna

# One DNS label in its ASCII form: letters, digits, hyphens, not at either end (RFC 1123).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class DomainError(ValueError):
    """A name that is not a usable domain or host name; the message is for an administrator."""


def to_ascii(name: str, *, what: str = "domain") -> str:
    """Normalise a typed name to lower-case A-labels, or raise DomainError saying why not.

    Accepts U-labels ("bücher.example") and A-labels alike, ignores case and one trailing
    dot. Refuses URLs, ports, addresses, single labels and anything IDNA 2008 refuses.
    """
    value = name.strip().rstrip(".")
    if not value:
        raise DomainError(f"Enter a {what}.")
    if "://" in value or "/" in value:
        raise DomainError(f"Enter just the {what}, like example.org, without http:// or a path.")
    if "@" in value:
        raise DomainError(f"Enter just the {what}, without a user name or @.")
    if ":" in value and not _is_ip(value):
        raise DomainError(f"Enter the {what} without a port; ports have their own field.")
    if _is_ip(value):
        raise DomainError(f"Enter a {what} name, not an IP address.")
    try:
        ascii_name = idna.encode(value, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise DomainError(f"{value!r} is not a valid {what} ({exc}).") from exc
    ascii_name = ascii_name.lower()
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise DomainError(f"{value!r} has no dot: enter a full {what} such as example.org.")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise DomainError(f"{value!r} is not a valid {what}.")
    if labels[-1].isdigit():
        raise DomainError(f"{value!r} is not a valid {what}: the last label is a number.")
    return ascii_name


def to_unicode(ascii_name: str) -> str:
    """The readable form of a stored A-label name (stored names always decode)."""
    try:
        return idna.decode(ascii_name)
    except idna.IDNAError:
        return ascii_name


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True
