"""Normalising and checking what people type: local parts, reserved names, third-party IDs."""

from __future__ import annotations

import itertools
import re
import unicodedata

from django.utils.translation import gettext

from portal.errors import InvalidInput
from providers.domains import DomainError, to_ascii
from providers.models import Provider

# Never registrable, on any provider: RFC 2142 role addresses, mail-system names and names
# that would let someone impersonate the operator. Admins add more in admin (ReservedName).
BUILTIN_RESERVED = frozenset(
    {
        "abuse", "admin", "administrator", "billing", "daemon", "ftp", "help", "hostmaster",
        "imap", "info", "mail", "mailer-daemon", "mailerdaemon", "marketing", "news", "nobody",
        "noc", "no-reply", "noreply", "null", "pop", "pop3", "postmaster", "root", "sales",
        "security", "smtp", "ssl-admin", "support", "sysadmin", "system", "usenet", "uucp",
        "webmaster", "www", "www-data",
    }
)  # fmt: skip

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")


class NameRefused(InvalidInput):
    code = "invalid_username"


def normalise_local_part(typed: str) -> str:
    """The stored form of a typed user name: compatibility-folded (NFKC) and lower-case.

    So "Juliet", its full-width form and "juliet" are one name. What is left must then
    pass check_local_part; nothing else is folded (no dot or plus removal).
    """
    return unicodedata.normalize("NFKC", typed).strip().lower()


def check_local_part(local_part: str, provider: Provider, reserved: frozenset[str]) -> None:
    """Raise NameRefused saying why `local_part` (normalised) cannot be registered."""
    low, high = provider.username_min_length, provider.username_max_length
    if not low <= len(local_part) <= high:
        raise NameRefused(
            gettext("The user name must have %(low)d to %(high)d characters.")
            % {"low": low, "high": high}
        )
    punctuation = provider.username_punctuation
    allowed = f"a-z0-9{re.escape(punctuation)}"
    if not re.fullmatch(f"[{allowed}]+", local_part):
        if punctuation:
            raise NameRefused(
                gettext("Use only the letters a-z, digits and %(punctuation)s.")
                % {"punctuation": " ".join(punctuation)}
            )
        raise NameRefused(gettext("Use only the letters a-z, digits."))
    if local_part[0] in punctuation or local_part[-1] in punctuation:
        raise NameRefused(gettext("The user name cannot start or end with punctuation."))
    if any(a in punctuation and b in punctuation for a, b in itertools.pairwise(local_part)):
        raise NameRefused(gettext("The user name cannot have two punctuation marks in a row."))
    # A reserved name stays reserved with punctuation changed: "post-master", "no.reply".
    if local_part in reserved or re.sub(r"[._-]", "", local_part) in {
        re.sub(r"[._-]", "", name) for name in reserved
    }:
        raise NameRefused(gettext("This name is reserved."))


def normalise_third_pid(kind: str, value: str) -> str:
    """The stored form of an email address or phone number, or InvalidInput saying why."""
    value = unicodedata.normalize("NFKC", value).strip()
    if kind == "email":
        if not _EMAIL.match(value) or any(ord(char) < 32 for char in value):
            raise InvalidInput("Enter a valid email address.", code="invalid_email")
        local, _at, domain = value.rpartition("@")
        try:
            return f"{local.lower()}@{to_ascii(domain)}"
        except DomainError as exc:
            raise InvalidInput("Enter a valid email address.", code="invalid_email") from exc
    if kind == "msisdn":
        digits = re.sub(r"[\s().-]", "", value)
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        if not _E164.match(digits):
            raise InvalidInput(
                "Enter the phone number in international form, e.g. +491701234567.",
                code="invalid_msisdn",
            )
        return digits
    raise InvalidInput(f"Unknown third-party ID type {kind!r}; use email or msisdn.")
